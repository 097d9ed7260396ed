# GPLQ W4A4 for mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x on COCO (FP32 46.0 / 41.6, GPLQ W4A4 40.1 / 38.9 (paper)).
# scope='full': backbone, FPN, RPN and RoI heads are quantized (how published
# W4A4 detection results are measured).
_base_ = './gplq_mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_w4a4.py'
model = dict(scope='full')
