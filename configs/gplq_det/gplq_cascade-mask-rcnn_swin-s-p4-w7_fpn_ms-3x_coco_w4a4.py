# GPLQ W4A4 for cascade-mask-rcnn_swin-s-p4-w7_fpn_ms-3x on COCO (FP32 51.9 / 45.0; RepQ-ViT W4A4 49.3 / 43.1 (other PTQ work)).
# scope='backbone': the Swin backbone is quantized.
#   bash tools/dist_train.sh configs/gplq_det/gplq_cascade-mask-rcnn_swin-s-p4-w7_fpn_ms-3x_coco_w4a4.py 8
#   bash tools/dist_test.sh configs/gplq_det/gplq_cascade-mask-rcnn_swin-s-p4-w7_fpn_ms-3x_coco_w4a4.py \
#       work_dirs/gplq_cascade-mask-rcnn_swin-s-p4-w7_fpn_ms-3x_coco_w4a4/gplq_w4a4.pth 8
_base_ = './_base_/cascade-mask-rcnn_swin-s-p4-w7_fpn_ms-3x_coco.py'
custom_imports = dict(imports=['gplq_mm'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='GPLQDetector',
    architecture={{_base_.model}},
    # mmdet 3.x has no official Cascade Mask R-CNN Swin checkpoint (the
    # Swin authors' ones are in mmdet 2.x key layout): train one with the
    # _base_ config, then --cfg-options model.checkpoint=/path/to/it.pth
    checkpoint=None,
    scope='backbone',
    quant_cfg=dict(w_bits=4, a_bits=4))  # patch-embed input: 8 bits

# Paper recipe: the detector's own loss, AdamW, constant LR 5e-6, 1 image per
# GPU, 1 epoch of train2017 (8 GPUs; fewer GPUs: see configs/gplq/ for the LR
# table).
train_dataloader = dict(batch_size=1)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-6, weight_decay=0.0))
param_scheduler = []
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=1, val_interval=1)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=1))
custom_hooks = [dict(type='GPLQHook', calib_images=256, ptq_images=512)]
