# GPLQ W4A4 for mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x on COCO, scope 'full': backbone, FPN, RPN and
# RoI heads quantized (patch-embed input at 8 bits).
# Box / mask AP. This is the scope of the PTQ baselines quoted with
# it: RepQ-ViT W4A4 42.6 / 40.0 (FP32 48.5 / 43.3).
# The paper's GPLQ W4A4 43.4 / 41.3 does not state its scope (see the
# un-suffixed config).
_base_ = './gplq_mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco_w4a4.py'
model = dict(scope='full')
