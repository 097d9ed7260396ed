# GPLQ W4A4 of the whole demo detector: backbone, FPN, RPN and RoI heads.
_base_ = ['./gplq_mask-rcnn_swin-tiny_digits_w4a4.py']
model = dict(scope='full')
