# GPLQ W4A4 for mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x on COCO, scope 'full': backbone, FPN, RPN and
# RoI heads quantized (patch-embed input at 8 bits).
# Box / mask AP. This is the scope of the PTQ baselines quoted with
# it: RepQ-ViT W4A4 36.1 / 36.0 (FP32 46.0 / 41.6).
# The paper's GPLQ W4A4 40.1 / 38.9 does not state its scope (see the
# un-suffixed config).
_base_ = './gplq_mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_w4a4.py'
model = dict(scope='full')
