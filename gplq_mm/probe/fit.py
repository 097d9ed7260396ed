"""The probe protocol on features in memory, without a Runner: for many small
probes in one process (the transfer demo's k-shot draws, the speed
benchmark). configs/probe/ runs the same protocol through tools/train.py
(:class:`~gplq_mm.probe.LinearProbeLoop`)."""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['PROTOCOL', 'fit_linear', 'accuracy', 'lr_at']

# The paper's (100 epochs, LR 1e-3, batch 64) and DTL's code's (AdamW,
# weight decay 0.05 but none on the bias, 10 linear warm-up epochs from
# 1e-7 = LR * 1e-4, then cosine to 0, per iteration).
# configs/probe/_base_/probe_runtime.py holds the same numbers; a test keeps
# them equal.
PROTOCOL = dict(epochs=100, lr=1e-3, weight_decay=0.05, batch_size=64,
                warmup_epochs=10, warmup_start_factor=1e-4)


def lr_at(it: int, total: int, warmup: int, lr: float,
          start_factor: float) -> float:
    """The LR of iteration ``it`` (0-based): linear warm-up from
    ``start_factor * lr`` over ``warmup`` iterations, then cosine to 0,
    as mmengine's LinearLR + CosineAnnealingLR (eta_min 0) per
    iteration."""
    if it < warmup:
        return lr * (start_factor + (1 - start_factor) * it / warmup)
    t = (it - warmup) / max(total - warmup, 1)
    return 0.5 * lr * (1 + math.cos(math.pi * t))


def fit_linear(feats: torch.Tensor, labels: torch.Tensor, num_classes: int,
               seed: int = 0, epochs: Optional[int] = None,
               min_iters: int = 0, **protocol) -> nn.Linear:
    """A new linear head trained on ``feats`` (N, C) -> ``labels`` with
    :data:`PROTOCOL` (keywords override it): shuffled batches, the last one
    short, a seeded initialization and shuffle.

    ``min_iters``: train for more epochs (warm-up scaled alike) when the
    protocol's would take fewer steps. 100 epochs of a set of tens of images
    are only 100 steps of AdamW at <= 1e-3, too few to fit even separable
    features; FGVC sets give thousands."""
    p = dict(PROTOCOL, **protocol)
    if epochs is not None:
        p['epochs'] = epochs
    unknown = set(p) - set(PROTOCOL)
    if unknown:
        raise TypeError(f'fit_linear: unknown protocol keys {sorted(unknown)}')
    feats = feats.float()
    n, bs = len(labels), p['batch_size']
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(feats.shape[1], num_classes)
    with torch.no_grad():  # nn.Linear's default init, from our generator
        bound = 1 / math.sqrt(feats.shape[1])
        head.weight.uniform_(-bound, bound, generator=g)
        head.bias.uniform_(-bound, bound, generator=g)
    opt = torch.optim.AdamW([
        dict(params=[head.weight], weight_decay=p['weight_decay']),
        dict(params=[head.bias], weight_decay=0.0)], lr=p['lr'])
    per_epoch = math.ceil(n / bs)
    scale = max(1.0, min_iters / (p['epochs'] * per_epoch))
    p['epochs'] = math.ceil(p['epochs'] * scale)
    total = p['epochs'] * per_epoch
    warmup = round(p['warmup_epochs'] * scale * per_epoch)
    it = 0
    for _ in range(p['epochs']):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, bs):
            b = order[i:i + bs]
            for group in opt.param_groups:
                group['lr'] = lr_at(it, total, warmup, p['lr'],
                                    p['warmup_start_factor'])
            loss = F.cross_entropy(head(feats[b]), labels[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            it += 1
    return head


@torch.no_grad()
def accuracy(head: nn.Module, feats: torch.Tensor,
             labels: torch.Tensor) -> float:
    """Top-1 of ``head`` on ``feats``, in percent."""
    pred = head(feats.float()).argmax(dim=1)
    return float((pred == labels).float().mean()) * 100
