# Cascade Mask R-CNN with a Swin-T backbone (mmdet 3.3 ships none), the
# Swin authors' architecture (Swin-Transformer-Object-Detection,
# cascade_mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_giou_4conv1f_
# adamw_3x_coco.py, FP32 50.4 / 43.7): mmdet's Cascade Mask R-CNN 3x
# multi-scale config with mmdet's SwinTransformer for its ResNet and, in each
# of the 3 stages, a 4conv1fc box head (SyncBN, class-specific regression of
# decoded boxes, GIoU loss) for the Shared2FC / SmoothL1 one.
# tools/convert_swin_det.py turns the authors' (mmdet 2.x) checkpoint into
# one that loads strictly into this model.
_base_ = 'mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_ms-3x_coco.py'


def _box_head(stds):
    return dict(
        type='Shared4Conv1FCBBoxHead', in_channels=256,
        conv_out_channels=256, fc_out_channels=1024, roi_feat_size=7,
        num_classes=80,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder',
                        target_means=[0., 0., 0., 0.], target_stds=stds),
        reg_class_agnostic=False, reg_decoded_bbox=True,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False,
                      loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=10.0))


model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        embed_dims=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.,
        attn_drop_rate=0.,
        drop_path_rate=0.2,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        convert_weights=True),
    neck=dict(in_channels=[96, 192, 384, 768]),
    roi_head=dict(bbox_head=[
        _box_head([0.1, 0.1, 0.2, 0.2]),
        _box_head([0.05, 0.05, 0.1, 0.1]),
        _box_head([0.033, 0.033, 0.067, 0.067])]))
del _box_head
