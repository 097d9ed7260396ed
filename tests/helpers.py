"""Tiny mmpretrain / GPLQ configs for tests (16 px digits, 2-block ViT)."""
import copy

import torch
from mmengine.config import Config

from gplq_mm.utils import mmengine_checkpoint_globals


def load_ckpt(path):
    """``torch.load`` of an mmengine checkpoint (weights-only, with the
    types mmengine writes allowed), as tools/train.py and test.py load."""
    with mmengine_checkpoint_globals():
        return torch.load(path)

ARCH = dict(
    type='ImageClassifier',
    backbone=dict(
        type='VisionTransformer',
        arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                  feedforward_channels=64),
        img_size=16, patch_size=4),
    neck=None,
    head=dict(type='VisionTransformerClsHead', num_classes=10,
              in_channels=32),
    data_preprocessor=dict(num_classes=10, mean=[127.5] * 3,
                           std=[127.5] * 3, to_rgb=False))


def _data(root, split, n, shuffle, batch_size):
    pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
    return dict(
        batch_size=batch_size, num_workers=0,
        dataset=dict(type='CustomDataset', data_root=root,
                     ann_file=f'meta/{split}.txt', data_prefix='',
                     indices=n, pipeline=pipeline,
                     metainfo=dict(classes=[str(i) for i in range(10)])),
        sampler=dict(type='DefaultSampler', shuffle=shuffle))


def fp_cfg(root, work_dir, train_images=128, max_epochs=1):
    return Config(dict(
        default_scope='mmpretrain',
        model=copy.deepcopy(ARCH),
        work_dir=work_dir,
        train_dataloader=_data(root, 'train', train_images, True, 16),
        val_dataloader=_data(root, 'val', 64, False, 32),
        val_evaluator=dict(type='Accuracy', topk=(1, )),
        test_dataloader=_data(root, 'val', 64, False, 32),
        test_evaluator=dict(type='Accuracy', topk=(1, )),
        val_cfg=dict(), test_cfg=dict(),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs,
                       val_interval=100),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=1),
            logger=dict(type='LoggerHook', interval=5)),
        env_cfg=dict(dist_cfg=dict(backend='gloo')),
        randomness=dict(seed=0),
        log_level='WARNING'))


def gplq_cfg(root, work_dir, checkpoint, train_images=64, max_epochs=1,
             hook=None, **model_kw):
    cfg = fp_cfg(root, work_dir, train_images, max_epochs)
    cfg.custom_imports = dict(imports=['gplq_mm'])
    cfg.model = dict(type='GPLQClassifier', architecture=copy.deepcopy(ARCH),
                     checkpoint=checkpoint, **model_kw)
    cfg.optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-4,
                                            weight_decay=0.0))
    cfg.custom_hooks = [dict(type='GPLQHook', calib_images=32,
                             pca_images=64, ptq_images=32, **(hook or {}))]
    cfg.train_cfg = dict(type='GPLQTrainLoop', max_epochs=max_epochs,
                         val_interval=100)
    return cfg


def det_fp_cfg(root, work_dir, train_images=8, max_epochs=1):
    """The demo's tiny Swin Mask R-CNN on a few digit canvases."""
    import os.path as osp
    here = osp.dirname(osp.dirname(osp.abspath(__file__)))
    cfg = Config.fromfile(
        osp.join(here, 'configs/demo/mask-rcnn_swin-tiny_digits_fp.py'))
    cfg.work_dir = work_dir
    for split in ('train', 'val', 'test'):
        ds = cfg[f'{split}_dataloader'].dataset
        ds.data_root = root + '/'
        ds.indices = train_images if split == 'train' else 4
    for ev in ('val_evaluator', 'test_evaluator'):
        cfg[ev].ann_file = root + '/annotations/instances_val.json'
    cfg.train_cfg.max_epochs = max_epochs
    cfg.train_cfg.val_interval = 100
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=1)
    cfg.log_level = 'WARNING'
    return cfg


def gplq_det_cfg(root, work_dir, checkpoint, scope='backbone',
                 quant_cfg=None, **kw):
    cfg = det_fp_cfg(root, work_dir, **kw)
    cfg.custom_imports = dict(imports=['gplq_mm'])
    cfg.model = dict(type='GPLQDetector', architecture=cfg.model,
                     checkpoint=checkpoint, scope=scope,
                     quant_cfg=quant_cfg)
    cfg.optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-4,
                                            weight_decay=0.0))
    cfg.custom_hooks = [dict(type='GPLQHook', calib_images=4,
                             ptq_images=4)]
    cfg.train_cfg = dict(cfg.train_cfg, type='GPLQTrainLoop')
    return cfg
