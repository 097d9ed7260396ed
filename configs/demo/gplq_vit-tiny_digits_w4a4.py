# GPLQ W4A4 of the demo's float ViT (configs/demo/vit-tiny_digits_fp.py).
# Stage 1 (W32A4, activation-only QAT) then Stage 2 (weight PTQ + QwT) in one
# tools/train.py run; tools/test.py evaluates <work_dir>/gplq_w4a4.pth.
_base_ = ['./vit-tiny_digits_fp.py']
custom_imports = dict(imports=['gplq_mm'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='GPLQClassifier',
    architecture={{_base_.model}},
    checkpoint='work_dirs/demo/fp/epoch_60.pth',
    quant_cfg=dict(w_bits=4, a_bits=4),
    alpha=1.0)

# The paper: AdamW, constant LR, 1 epoch (ImageNet: 10,009 iterations at
# batch 128, LR 5e-6). The digits train set is 1,438 images, so one epoch at
# batch 16 is 90 iterations; the demo trains 5 epochs (450 iterations) at a
# constant 1e-4 instead: the same recipe scaled to a dataset ~900x smaller.
train_dataloader = dict(batch_size=16)
optim_wrapper = dict(
    _delete_=True,
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.0))
param_scheduler = []
train_cfg = dict(by_epoch=True, max_epochs=5, val_interval=5)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=1))
custom_hooks = [
    dict(type='GPLQHook', calib_images=256, pca_images=1024, ptq_images=512)
]
