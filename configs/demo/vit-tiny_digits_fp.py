# A small float ViT trained from scratch on scikit-learn's digits
# (tools/make_digits.py): the "pretrained FP32 model" of the demo.
_base_ = ['mmpretrain::_base_/default_runtime.py']

data_root = 'data/digits'
embed_dims = 96
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='VisionTransformer',
        arch=dict(embed_dims=embed_dims, num_layers=4, num_heads=4,
                  feedforward_channels=192),
        img_size=32, patch_size=4, drop_path_rate=0.1),
    neck=None,
    head=dict(
        type='VisionTransformerClsHead', num_classes=10,
        in_channels=embed_dims,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1)))

data_preprocessor = dict(
    num_classes=10, mean=[127.5] * 3, std=[127.5] * 3, to_rgb=False)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=32, crop_ratio_range=(0.7, 1.0),
         aspect_ratio_range=(0.8, 1.25)),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
_dataset = dict(type='CustomDataset', data_root=data_root,
                metainfo=dict(classes=[str(i) for i in range(10)]))
train_dataloader = dict(
    batch_size=64, num_workers=0,
    dataset=dict(**_dataset, ann_file='meta/train.txt', data_prefix='',
                 pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(
    batch_size=128, num_workers=0,
    dataset=dict(**_dataset, ann_file='meta/val.txt', data_prefix='',
                 pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

max_epochs = 60
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.05, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=5, end=max_epochs,
         eta_min=1e-5, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=10)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=max_epochs,
                    max_keep_ckpts=1))
randomness = dict(seed=0)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
