# GPLQ W4A4 for mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x on COCO (FP32 48.5 / 43.3, GPLQ W4A4 43.4 / 41.3 (paper)).
# scope='full': backbone, FPN, RPN and RoI heads are quantized (how published
# W4A4 detection results are measured).
_base_ = './gplq_mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco_w4a4.py'
model = dict(scope='full')
