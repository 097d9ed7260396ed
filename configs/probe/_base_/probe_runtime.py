# The linear-probe protocol of GPLQ's Table 1 ("as in DTL"): a frozen
# ImageNet backbone, a new linear head, 100 epochs, AdamW at LR 1e-3,
# batch 64 (the paper); weight decay 0.05, 10 linear warm-up epochs then
# cosine (DTL's train_vit_few_shot.py). Where each choice comes from:
# configs/probe/README.md. A dataset config sets the data and num_classes;
# the probed checkpoint and the config it came from are set per run:
#   --cfg-options model.source=CONFIG model.checkpoint=CKPT
_base_ = 'mmpretrain::_base_/default_runtime.py'

custom_imports = dict(imports=['gplq_mm'], allow_failed_imports=False)
default_scope = 'mmpretrain'

model = dict(
    type='LinearProbe',
    source='configs/gplq/gplq_swin-t_8xb16_w4a4_in1k.py',
    checkpoint=None,
    num_classes=None,  # the dataset config's
    internal_fp32=False)
# Keys set here go over the source config's data_preprocessor (LinearProbe),
# so the backbone sees images normalized as in its own training (ImageNet
# mean / std for every shipped GPLQ config).
data_preprocessor = dict(num_classes=None)  # the dataset config's

# 'features': the backbone runs once per training image (test pipeline),
# the head trains on the cached features; 'online': the backbone runs
# every step on train_pipeline's augmented images.
train_cfg = dict(type='LinearProbeLoop', max_epochs=100, mode='features',
                 val_interval=100)
val_cfg = dict()
test_cfg = dict()

# DTL: AdamW (torch's betas), no weight decay on biases
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    paramwise_cfg=dict(bias_decay_mult=0.0))
# 10 epochs from 1e-7 (DTL's warmup_lr_init) up to 1e-3, then cosine to 0,
# stepped every iteration
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=10,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=90, eta_min=0.0, by_epoch=True,
         begin=10, end=100, convert_to_iter_based=True),
]

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow',
         interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
# a total batch of 64 (on N GPUs, mode='online': batch_size=64 // N); the
# dataset configs add type, data_root and split to each dataset
train_dataloader = dict(
    batch_size=64,
    num_workers=5,
    dataset=dict(pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(
    batch_size=64,
    num_workers=5,
    dataset=dict(pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_evaluator = val_evaluator

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    # every 10 epochs, the latest kept, written atomically (gplq_mm.utils)
    checkpoint=dict(type='CheckpointHook', by_epoch=True, interval=10,
                    max_keep_ckpts=1, save_last=True,
                    backend_args=dict(backend='gplq_atomic')))

randomness = dict(seed=0, deterministic=False)
