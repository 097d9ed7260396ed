# GPLQ W4A4 for cascade-mask-rcnn_swin-t-p4-w7_fpn_ms-3x on COCO, scope 'full': backbone, FPN, RPN and
# RoI heads quantized (patch-embed input at 8 bits).
# Box / mask AP. This is the scope of the PTQ baselines quoted with
# it: RepQ-ViT W4A4 47.0 / 41.4, RepQ-ViT + QwT 47.6 / 41.8 (FP32 50.4 / 43.7).
# The GPLQ paper has no Cascade Mask R-CNN result.
_base_ = './gplq_cascade-mask-rcnn_swin-t-p4-w7_fpn_ms-3x_coco_w4a4.py'
model = dict(scope='full')
