# Cascade Mask R-CNN with a Swin-S backbone (mmdet 3.3 ships none):
# mmdet's own Cascade Mask R-CNN 3x multi-scale config with its ResNet
# replaced by mmdet's SwinTransformer, as in the Swin paper.
_base_ = 'mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_ms-3x_coco.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        embed_dims=96,
        depths=[2, 2, 18, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.,
        attn_drop_rate=0.,
        drop_path_rate=0.3,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        convert_weights=True),
    neck=dict(in_channels=[96, 192, 384, 768]))
