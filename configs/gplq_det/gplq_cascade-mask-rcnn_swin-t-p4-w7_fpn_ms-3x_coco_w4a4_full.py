# GPLQ W4A4 for cascade-mask-rcnn_swin-t-p4-w7_fpn_ms-3x on COCO (FP32 50.4 / 43.7; RepQ-ViT W4A4 47.0 / 41.4 (other PTQ work)).
# scope='full': backbone, FPN, RPN and RoI heads are quantized (how published
# W4A4 detection results are measured).
_base_ = './gplq_cascade-mask-rcnn_swin-t-p4-w7_fpn_ms-3x_coco_w4a4.py'
model = dict(scope='full')
