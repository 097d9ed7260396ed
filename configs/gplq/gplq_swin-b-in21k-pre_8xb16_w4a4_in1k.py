# GPLQ W4A4 for swin-b-in21k-pre on ImageNet-1k (FP32 85.3, GPLQ W4A4 84.0 (paper, Swin-B 22k)).
# Stage 1 (W32A4 activation-only QAT, 1 epoch) and Stage 2 (weight PTQ + QwT)
# run in one call:
#   bash tools/dist_train.sh configs/gplq/gplq_swin-b-in21k-pre_8xb16_w4a4_in1k.py 8
#   bash tools/dist_test.sh configs/gplq/gplq_swin-b-in21k-pre_8xb16_w4a4_in1k.py work_dirs/gplq_swin-b-in21k-pre_8xb16_w4a4_in1k/gplq_w4a4.pth 8
# Data: mmpretrain's ImageNet layout under data/imagenet (the host config).
_base_ = 'mmpretrain::swin_transformer/swin-base_16xb64_in1k.py'
custom_imports = dict(imports=['gplq_mm'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='GPLQClassifier',
    architecture={{_base_.model}},
    # The pretrained FP32 model: teacher and starting point. Any local path
    # works (--cfg-options model.checkpoint=/path/to/fp32.pth).
    checkpoint='https://download.openmmlab.com/mmclassification/v0/swin-transformer/convert/swin_base_patch4_window7_224_22kto1k-f967f799.pth',
    quant_cfg=dict(w_bits=4, a_bits=4),  # patch-embed input: 8 bits
    alpha=1.0)  # L = L_CE + alpha * L_PCA

# Paper recipe: AdamW, constant LR, no warmup, 1 epoch, batch 128 in total.
#   GPUs x batch/GPU | total | LR
#   8 x 16           | 128   | 5e-6   (this file)
#   4 x 16           | 64    | 2.5e-6
#   2 x 16           | 32    | 1e-6
#   1 x 16           | 16    | 1e-6
# e.g. 1 GPU: --cfg-options optim_wrapper.optimizer.lr=1e-6
train_dataloader = dict(batch_size=16)
optim_wrapper = dict(
    _delete_=True,
    optimizer=dict(type='AdamW', lr=5e-6, weight_decay=0.0))
param_scheduler = []
train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=1)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=100),
    checkpoint=dict(type='CheckpointHook', interval=1, by_epoch=True,
                    max_keep_ckpts=1))
custom_hooks = [
    dict(type='GPLQHook', calib_images=256, pca_images=10000, ptq_images=512)
]
