"""LinearProbeLoop: the probe's train loop, on cached features (default) or
on images with training augmentation."""
import copy
import hashlib
import json
import os
import os.path as osp
import time
from typing import Callable, Dict, Optional, Tuple

import torch
from mmengine.dist import get_world_size
from mmengine.registry import LOOPS
from mmengine.runner import EpochBasedTrainLoop

from ..engine.steps import PROGRESS_S, unwrap
from ..utils.data import with_progress
from ..utils.io import file_sha256

__all__ = ['LinearProbeLoop', 'extract_features', 'feature_key', 'MODES']

MODES = ('features', 'online')
CACHE_VERSION = 1  # bump when what a cache file holds changes


@torch.no_grad()
def extract_features(model, loader, log: Optional[Callable[[str], None]] =
                     None, features: Optional[Callable] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """One eval pass of ``loader`` through ``model`` (a
    :class:`~gplq_mm.probe.LinearProbe`): the frozen backbone's features
    (float32, on the CPU; ``features`` of the preprocessed images instead,
    when given) and the ground-truth labels."""
    features = features or model.features
    feats, labels = [], []
    n = len(loader.dataset)
    batches = (model.data_preprocessor(d, False) for d in loader)
    if log is not None:
        batches = with_progress(batches, n, 'features', log, PROGRESS_S)
    for data in batches:
        feats.append(features(data['inputs']).float().cpu())
        labels.append(torch.cat([s.gt_label for s in data['data_samples']]
                                ).cpu())
    if not feats:
        raise ValueError('the probe training set is empty: check '
                         'train_dataloader.dataset')
    return torch.cat(feats), torch.cat(labels)


def feature_key(model, dataset_cfg: dict) -> str:
    """What the cached features depend on, hashed: the probed checkpoint's
    content, the config its backbone was built from (the source's model,
    the checkpoint's signature, ``internal_fp32``, ``use_qwt``), the data
    preprocessor and the feature dataset's config (files, pipeline)."""
    h = hashlib.sha256()
    pre = model.data_preprocessor
    for part in (CACHE_VERSION, file_sha256(model.checkpoint),
                 model.backbone.built_cfg, type(pre).__name__,
                 {k: v.tolist() for k, v in pre.state_dict().items()},
                 dataset_cfg):
        h.update(json.dumps(part, sort_keys=True, default=repr).encode())
        h.update(b'\0')
    return h.hexdigest()[:24]


@LOOPS.register_module()
class LinearProbeLoop(EpochBasedTrainLoop):
    """The linear probe's epochs.

    ``mode='features'`` (default): before the first epoch, the frozen
    backbone computes the feature of every training image once, with the
    feature pipeline (no augmentation), and the head trains on these
    features for every epoch (shuffled, batches of the train dataloader's
    size, as many iterations per epoch as the dataloader has, so
    iteration-based schedules are the same). The features are cached in
    ``cache_dir`` under a key of everything they depend on
    (:func:`feature_key`): a rerun, a resumed run or another probe of the
    same checkpoint reuses them, a changed checkpoint or pipeline never does.

    ``mode='online'``: mmengine's epoch loop: the backbone runs every step
    on the train pipeline's augmented images.

    Args:
        mode (str): ``'features'`` or ``'online'``.
        feature_pipeline (list, optional): The pipeline of the feature pass.
            Defaults to the test (else val) dataloader's pipeline.
        cache_dir (str, optional): Defaults to ``<work_dir>/features``.
        Others: as :class:`mmengine.runner.EpochBasedTrainLoop`.
    """

    def __init__(self, runner, dataloader, max_epochs: int,
                 val_begin: int = 1, val_interval: int = 1,
                 mode: str = 'features',
                 feature_pipeline: Optional[list] = None,
                 cache_dir: Optional[str] = None,
                 dynamic_intervals=None):
        if mode not in MODES:
            raise ValueError(f'LinearProbeLoop.mode={mode!r}: use one of '
                             f'{MODES}')
        self.mode = mode
        self.cache_dir = cache_dir or osp.join(runner.work_dir, 'features')
        self.feature_loader_cfg = None
        if mode == 'features':
            if not isinstance(dataloader, dict):
                raise TypeError('LinearProbeLoop(mode=features) needs the '
                                'train dataloader as a config dict')
            if get_world_size() > 1:
                raise ValueError(
                    "LinearProbeLoop: mode='features' runs in one process "
                    '(the head trains in minutes on a CPU); launch without '
                    "--launcher, or use train_cfg.mode='online'")
            if dynamic_intervals:
                raise ValueError("LinearProbeLoop(mode='features') takes no "
                                 'dynamic_intervals')
            self.feature_loader_cfg = self._make_feature_loader_cfg(
                runner, dataloader, feature_pipeline)
        super().__init__(runner, dataloader, max_epochs, val_begin,
                         val_interval, dynamic_intervals)
        self.batch_size = int(dataloader['batch_size']) if isinstance(
            dataloader, dict) else self.dataloader.batch_size
        self.drop_last = bool(dataloader.get('drop_last', False)) if \
            isinstance(dataloader, dict) else self.dataloader.drop_last

    @staticmethod
    def _make_feature_loader_cfg(runner, dataloader: dict,
                                 pipeline: Optional[list]) -> dict:
        """The train dataloader's config with the feature pipeline and no
        shuffle."""
        cfg = copy.deepcopy(dict(dataloader))
        if pipeline is None:
            for name in ('test_dataloader', 'val_dataloader'):
                try:
                    pipeline = runner.cfg[name]['dataset']['pipeline']
                    break
                except (KeyError, TypeError):
                    continue
        if pipeline is None or 'pipeline' not in cfg.get('dataset', {}):
            raise ValueError(
                "LinearProbeLoop(mode='features') needs the pipeline of the "
                'feature pass: set train_cfg.feature_pipeline, or a '
                'test_dataloader.dataset.pipeline, and a train dataset with '
                'a pipeline')
        cfg['dataset'] = dict(cfg['dataset'], pipeline=copy.deepcopy(
            pipeline))
        cfg['sampler'] = dict(type='DefaultSampler', shuffle=False)
        cfg.pop('batch_sampler', None)
        return cfg

    # -- features -----------------------------------------------------------
    def features(self) -> Dict[str, torch.Tensor]:
        """The training set's cached features (computed and cached when
        missing): ``features`` (N, C) and ``labels`` (N,)."""
        model = unwrap(self.runner.model)
        key = feature_key(model, self.feature_loader_cfg['dataset'])
        path = osp.join(self.cache_dir, f'{key}.pt')
        log = self.runner.logger.info
        if osp.isfile(path):
            data = torch.load(path, map_location='cpu', weights_only=True)
            log(f'probe: {len(data["labels"])} cached features reused '
                f'({path})')
            return data
        t = time.time()
        loader = self.runner.build_dataloader(copy.deepcopy(
            self.feature_loader_cfg), seed=self.runner.seed)
        was_training = model.training
        model.train(False)
        feats, labels = extract_features(model, loader, log)
        model.train(was_training)
        data = dict(features=feats, labels=labels)
        os.makedirs(self.cache_dir, exist_ok=True)
        tmp = f'{path}.tmp{os.getpid()}'
        torch.save(data, tmp)
        os.replace(tmp, path)  # atomic: a killed run leaves no half file
        log(f'probe: {len(labels)} features of width {feats.shape[1]} in '
            f'{time.time() - t:.1f}s, cached to {path}')
        return data

    # -- the loop -----------------------------------------------------------
    def run(self):
        if self.mode == 'online':
            return super().run()
        self.runner.call_hook('before_train')
        data = self.features()
        while self._epoch < self._max_epochs and not self.stop_training:
            self.run_feature_epoch(data['features'], data['labels'])
            if (self.runner.val_loop is not None
                    and self._epoch >= self.val_begin
                    and (self._epoch % self.val_interval == 0
                         or self._epoch == self._max_epochs)):
                self.runner.val_loop.run()
        self.runner.call_hook('after_train')
        return self.runner.model

    def run_feature_epoch(self, feats: torch.Tensor,
                          labels: torch.Tensor) -> None:
        """One epoch of head training on ``feats``: a shuffle seeded by the
        run's seed and the epoch, then :meth:`run_iter` per batch, hooks
        included. A run resumed from a checkpoint written mid-epoch draws
        the same shuffle and skips the batches it already trained on."""
        g = torch.Generator().manual_seed(
            (self.runner.seed or 0) * 1000003 + self._epoch)
        order = torch.randperm(len(labels), generator=g)
        n, bs = len(labels), self.batch_size
        starts = list(range(0, n - n % bs if self.drop_last else n, bs))
        done = self._iter - self._epoch * len(starts)
        if not 0 <= done < len(starts):
            raise ValueError(
                f'the checkpoint was written at iteration {self._iter}, '
                f'epoch {self._epoch + 1}, but an epoch here has '
                f'{len(starts)} batches: resume with the training set and '
                'batch size it was written with')
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        for idx, i in enumerate(starts[done:], done):
            b = order[i:i + bs]
            self.run_iter(idx, dict(features=feats[b], labels=labels[b]))
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1
