# GPLQ W4A4 for mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x on COCO (FP32 46.0 / 41.6, GPLQ W4A4 40.1 / 38.9 (paper)).
# scope='full': backbone, FPN, RPN and RoI heads are quantized (how published W4A4 detection results are measured).
#   bash tools/dist_train.sh configs/gplq_det/gplq_mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_w4a4_full.py 8
#   bash tools/dist_test.sh configs/gplq_det/gplq_mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_w4a4_full.py \
#       work_dirs/gplq_mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_w4a4_full/gplq_w4a4.pth 8
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
custom_imports = dict(imports=['gplq_mm'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='GPLQDetector',
    architecture={{_base_.model}},
    # The pretrained FP32 detector: teacher and starting point.
    # Another local path works: --cfg-options model.checkpoint=/path.pth
    checkpoint='https://download.openmmlab.com/mmdetection/v2.0/swin/mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco/mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_20210906_131725-bacf6f7b.pth',
    scope='full',
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
