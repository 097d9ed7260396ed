# GPLQ W4A4 for mask-rcnn_swin-t-p4-w7_fpn_1x on COCO (FP32 42.6 / 39.3, GPLQ W4A4 37.9 / 36.8 (paper, box / mask AP)).
# scope='full': backbone, FPN, RPN and RoI heads are quantized (how published
# W4A4 detection results are measured).
_base_ = './gplq_mask-rcnn_swin-t-p4-w7_fpn_1x_coco_w4a4.py'
model = dict(scope='full')
