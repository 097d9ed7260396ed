# GPLQ W4A4 for mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x on COCO, scope 'backbone': the Swin backbone
# is quantized; FPN, RPN and RoI heads stay FP32.
# Box / mask AP.
# Paper: FP32 48.5 / 43.3, GPLQ W4A4 43.4 / 41.3, RepQ-ViT W4A4 42.6 / 40.0. The
# paper does not say which modules its W4A4 detector quantizes; its
# RepQ-ViT baseline quantizes the whole detector, as the *_full.py
# variant does: the RepQ-ViT number is that scope's, the GPLQ one's is
# unknown.
# Recipe: gplq_mm.recipes.detection.
#   bash tools/dist_train.sh configs/gplq_det/gplq_mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco_w4a4.py 8
#   bash tools/dist_test.sh configs/gplq_det/gplq_mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco_w4a4.py \
#       work_dirs/gplq_mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco_w4a4/gplq_w4a4.pth 8
_base_ = 'mmdet::swin/mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco.py'
from gplq_mm.recipes import detection  # noqa: E402

globals().update(detection(
    _base_,
    checkpoint='https://download.openmmlab.com/mmdetection/v2.0/swin/mask_rcnn_swin-s-p4-w7_fpn_fp16_ms-crop-3x_coco/mask_rcnn_swin-s-p4-w7_fpn_fp16_ms-crop-3x_coco_20210903_104808-b92c91f1.pth',
    lr=5e-6))  # 8 GPUs x 1 image; other GPU counts: configs/gplq/README.md
