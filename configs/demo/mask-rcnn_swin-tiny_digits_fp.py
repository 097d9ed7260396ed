# A small float Mask R-CNN with a tiny Swin backbone, trained from scratch on
# the digit canvases of tools/make_digit_coco.py: the demo's FP32 detector.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/default_runtime.py'
]
data_root = 'data/digit_coco/'
classes = tuple(str(i) for i in range(10))
model = dict(
    data_preprocessor=dict(
        mean=[127.5] * 3, std=[127.5] * 3, bgr_to_rgb=False,
        pad_size_divisor=32),
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        pretrain_img_size=128,
        embed_dims=32,
        depths=[2, 2, 2],
        num_heads=[2, 4, 8],
        strides=(4, 2, 2),
        window_size=4,
        mlp_ratio=4,
        drop_path_rate=0.1,
        out_indices=(0, 1, 2)),
    neck=dict(in_channels=[32, 64, 128], out_channels=64, num_outs=5),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=10),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=64,
                       num_classes=10)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=600, max_per_img=300),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(max_per_img=20)))

backend_args = None
# Canvases are 128 x 128 already; Resize records the scale factor that the
# mask head needs at test time. No flip: a mirrored digit is not a digit.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor')),
]
train_dataloader = dict(
    batch_size=4, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type='CocoDataset', data_root=data_root, metainfo=dict(classes=classes),
        ann_file='annotations/instances_train.json', data_prefix=dict(img=''),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='CocoDataset', data_root=data_root, metainfo=dict(classes=classes),
        ann_file='annotations/instances_val.json', data_prefix=dict(img=''),
        test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(
    type='CocoMetric', ann_file=data_root + 'annotations/instances_val.json',
    metric=['bbox', 'segm'], format_only=False)
test_evaluator = val_evaluator

max_epochs = 24
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs,
                 val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=200),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs,
         eta_min=1e-5)
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', interval=max_epochs,
                    max_keep_ckpts=1))
randomness = dict(seed=0)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
