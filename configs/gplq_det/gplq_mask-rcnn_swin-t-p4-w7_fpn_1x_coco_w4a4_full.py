# GPLQ W4A4 for mask-rcnn_swin-t-p4-w7_fpn_1x on COCO, scope 'full': backbone, FPN, RPN and
# RoI heads quantized (patch-embed input at 8 bits).
# Box / mask AP. This is the scope of the PTQ baselines quoted with
# it: RepQ-ViT W4A4 13.5 / 13.7 (FP32 42.6 / 39.3).
# The paper's GPLQ W4A4 37.9 / 36.8 does not state its scope (see the
# un-suffixed config).
_base_ = './gplq_mask-rcnn_swin-t-p4-w7_fpn_1x_coco_w4a4.py'
model = dict(scope='full')
