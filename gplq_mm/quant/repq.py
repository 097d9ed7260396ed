"""RepQ-ViT-style scale reparameterization of post-LayerNorm activations.

Per-channel ranges of a LayerNorm's output become one per-tensor range: with
``m`` the per-channel centre and ``h`` the half-range, ``r = h / mean(h)``;
the LayerNorm's affine absorbs ``(y - m) / r`` and the next Linear the
inverse (``W' = W diag(r)``, ``b' = b + W m``;
:func:`~gplq_mm.quant.ptq.fold_channel_scale`), so the float function is
unchanged and every channel of the new activation spans ``[-mean(h),
mean(h)]``: a symmetric per-tensor quantizer then fits it as well as a
per-channel one fitted the original.
"""
from typing import Callable, List, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from .ptq import fold_channel_scale

__all__ = ['reparameterize']


@torch.no_grad()
def reparameterize(pairs: List[Tuple[nn.LayerNorm, nn.Linear]],
                   run_calibration: Callable[[], None]) -> int:
    """Measure each LayerNorm's per-channel output range while
    ``run_calibration`` runs the (float) model (reduced over ranks when
    torch.distributed is initialized, so every rank folds the same
    ranges), then reparameterize. Returns the number of pairs changed."""
    stats, handles = {}, []
    for ln, _ in pairs:

        def hook(mod, args, out):
            y = out.detach().reshape(-1, out.shape[-1]).float()
            lo, hi = y.amin(0), y.amax(0)
            if mod in stats:
                lo = torch.minimum(lo, stats[mod][0])
                hi = torch.maximum(hi, stats[mod][1])
            stats[mod] = (lo, hi)

        handles.append(ln.register_forward_hook(hook))
    try:
        run_calibration()
    finally:
        for h in handles:
            h.remove()
    if dist.is_available() and dist.is_initialized():
        for ln, _ in pairs:  # every rank saw every LayerNorm
            lo, hi = stats[ln]
            dist.all_reduce(lo, op=dist.ReduceOp.MIN)
            dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    n = 0
    for ln, lin in pairs:
        if ln not in stats or ln.weight is None:
            continue
        lo, hi = stats[ln]
        h = ((hi - lo) / 2).clamp(min=1e-6)
        fold_channel_scale(ln, lin, h / h.mean(), shift=(hi + lo) / 2)
        n += 1
    return n
