# GPLQ W4A4 for cascade-mask-rcnn_swin-s-p4-w7_fpn_ms-3x on COCO, scope 'backbone': the Swin backbone
# is quantized; FPN, RPN and RoI heads stay FP32.
# Box / mask AP.
# No GPLQ number exists (the paper has no Cascade Mask R-CNN). FP32
# 51.9 / 45.0 is the Swin authors' checkpoint of this architecture (see
# _base_); RepQ-ViT W4A4 49.3 / 43.1 and RepQ-ViT + QwT 49.9 / 43.4 (other PTQ
# work) quantize the whole detector: compare them with *_full.py.
# Recipe: gplq_mm.recipes.detection.
#   bash tools/dist_train.sh configs/gplq_det/gplq_cascade-mask-rcnn_swin-s-p4-w7_fpn_ms-3x_coco_w4a4.py 8
#   bash tools/dist_test.sh configs/gplq_det/gplq_cascade-mask-rcnn_swin-s-p4-w7_fpn_ms-3x_coco_w4a4.py \
#       work_dirs/gplq_cascade-mask-rcnn_swin-s-p4-w7_fpn_ms-3x_coco_w4a4/gplq_w4a4.pth 8
_base_ = './_base_/cascade-mask-rcnn_swin-s-p4-w7_fpn_ms-3x_coco.py'
from gplq_mm.recipes import detection  # noqa: E402

globals().update(detection(
    _base_,
    # mmdet 3.x has no official Cascade Mask R-CNN Swin checkpoint (the
    # Swin authors' ones are in mmdet 2.x key layout): train one with
    # the _base_ config, then --cfg-options model.checkpoint=/path.pth
    checkpoint=None,
    lr=5e-6))  # 8 GPUs x 1 image; other GPU counts: configs/gplq/README.md
