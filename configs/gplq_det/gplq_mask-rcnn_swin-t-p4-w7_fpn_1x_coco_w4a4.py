# GPLQ W4A4 for mask-rcnn_swin-t-p4-w7_fpn_1x on COCO (FP32 42.6 / 39.3, GPLQ W4A4 37.9 / 36.8 (paper, box / mask AP)).
# scope='backbone': the Swin backbone is quantized.
#   bash tools/dist_train.sh configs/gplq_det/gplq_mask-rcnn_swin-t-p4-w7_fpn_1x_coco_w4a4.py 8
#   bash tools/dist_test.sh configs/gplq_det/gplq_mask-rcnn_swin-t-p4-w7_fpn_1x_coco_w4a4.py \
#       work_dirs/gplq_mask-rcnn_swin-t-p4-w7_fpn_1x_coco_w4a4/gplq_w4a4.pth 8
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['gplq_mm'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='GPLQDetector',
    architecture={{_base_.model}},
    # The pretrained FP32 detector: teacher and starting point.
    # Another local path works: --cfg-options model.checkpoint=/path.pth
    checkpoint='https://download.openmmlab.com/mmdetection/v2.0/swin/mask_rcnn_swin-t-p4-w7_fpn_1x_coco/mask_rcnn_swin-t-p4-w7_fpn_1x_coco_20210902_120937-9d6b7cfa.pth',
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
