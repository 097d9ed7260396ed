# Cascade Mask R-CNN with a Swin-S backbone (mmdet 3.3 ships none): the
# Swin-T one with Swin-S's depths and drop-path rate, as in the Swin paper.
_base_ = './cascade-mask-rcnn_swin-t-p4-w7_fpn_ms-3x_coco.py'
model = dict(backbone=dict(depths=[2, 2, 18, 2], drop_path_rate=0.3))
