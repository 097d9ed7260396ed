"""What a linear probe on cached features costs (``tools/bench_probe.py``):
the paper's protocol on random features of a dataset's size, through the
loop tools/train.py runs (:class:`~gplq_mm.probe.LinearProbeLoop`, hooks
and logging included) and through :func:`~gplq_mm.probe.fit_linear`."""
import os
import os.path as osp
import tempfile
import time
from typing import Dict

import numpy as np
import torch

__all__ = ['probe_cost']


def _stand_in_source(tmp: str, dim: int, classes: int) -> tuple:
    """A 1-block ViT of width ``dim`` (random weights) as a probe source:
    its config file and checkpoint. The backbone never runs here."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, DefaultScope
    model = dict(type='ImageClassifier', backbone=dict(
        type='VisionTransformer', arch=dict(
            embed_dims=dim, num_layers=1, num_heads=max(dim // 64, 1),
            feedforward_channels=dim), img_size=32, patch_size=16),
        neck=None, head=dict(type='VisionTransformerClsHead',
                             num_classes=classes, in_channels=dim),
        data_preprocessor=dict(num_classes=classes, mean=[0.] * 3,
                               std=[1.] * 3))
    src = osp.join(tmp, 'source.py')
    Config(dict(model=model, default_scope='mmpretrain')).dump(src)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        built = MODELS.build(model)
    ckpt = osp.join(tmp, 'source.pth')
    torch.save(dict(state_dict=built.state_dict()), ckpt)
    return src, ckpt


def probe_cost(n: int = 75750, dim: int = 768, classes: int = 101,
               epochs: int = 3, threads: int = 2) -> Dict:
    """Seconds per epoch of a probe on ``n`` random ``dim``-wide features
    (``classes`` classes, batch 64, AdamW with weight decay) through the
    loop (tools/train.py's path on a cache hit: the cache holds the random
    features; the run's setup is timed too) and through fit_linear, timed
    over ``epochs`` epochs each, and the 100-epoch projection of each."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from ..demo.data import write_image_set
    from ..probe import PROTOCOL, feature_key, fit_linear
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(n, dim, generator=g)
    labels = torch.randint(0, classes, (n, ), generator=g)
    out = dict(n=n, dim=dim, classes=classes, threads=threads,
               iters_per_epoch=-(-n // PROTOCOL['batch_size']))
    with tempfile.TemporaryDirectory() as tmp:
        src, ckpt = _stand_in_source(tmp, dim, classes)
        # the dataset is a stand-in: its cached features are the random ones
        write_image_set(tmp, np.zeros((2, 8, 8), np.uint8), [0, 1],
                        dict(train=[0, 1]))
        pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
        cfg = Config(dict(
            default_scope='mmpretrain', work_dir=tmp, log_level='WARNING',
            custom_imports=dict(imports=['gplq_mm']),
            model=dict(type='LinearProbe', source=src, checkpoint=ckpt,
                       num_classes=classes),
            train_dataloader=dict(
                batch_size=PROTOCOL['batch_size'], num_workers=0,
                dataset=dict(type='CustomDataset', data_root=tmp,
                             data_prefix='', ann_file='meta/train.txt',
                             pipeline=pipeline),
                sampler=dict(type='DefaultSampler', shuffle=True)),
            train_cfg=dict(type='LinearProbeLoop', max_epochs=epochs,
                           feature_pipeline=pipeline),
            optim_wrapper=dict(optimizer=dict(
                type='AdamW', lr=PROTOCOL['lr'],
                weight_decay=PROTOCOL['weight_decay'])),
            default_hooks=dict(logger=dict(type='LoggerHook',
                                           interval=50))))
        runner = Runner.from_cfg(cfg)
        loop = runner.train_loop
        key = feature_key(runner.model, loop.feature_loader_cfg['dataset'])
        os.makedirs(loop.cache_dir)
        torch.save(dict(features=feats, labels=labels),
                   osp.join(loop.cache_dir, f'{key}.pt'))
        t = time.perf_counter()
        runner.train()
        out['loop_s_per_epoch'] = (time.perf_counter() - t) / epochs
    t = time.perf_counter()
    fit_linear(feats, labels, classes, epochs=epochs, warmup_epochs=1)
    out['fit_linear_s_per_epoch'] = (time.perf_counter() - t) / epochs
    for k in ('loop', 'fit_linear'):
        out[f'{k}_100_epochs_min'] = out[f'{k}_s_per_epoch'] * 100 / 60
    return out
