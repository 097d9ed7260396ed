"""What runs: the one switch of weight / activation quantization and QwT
(:class:`set_quant_state`), calibration, and the composed paths of the
report."""
import contextlib
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from .layers import iter_quantizers
from .qwt import QwTCompensator

__all__ = ['set_quant_state', 'calibration', 'composed_paths']


class set_quant_state:  # noqa: N801 - used like torch.set_grad_enabled
    """Turn weight quantizers, activation quantizers and QwT compensators of
    ``model`` on or off (None: leave as they are); the one switch of what
    runs, everywhere in gplq_mm.

    Like ``torch.set_grad_enabled``, it applies at once, and used as a
    context manager it restores the previous state on exit::

        set_quant_state(model, weight=True, act=True)         # W4A4 from now
        with set_quant_state(model, weight=False, qwt=False):  # W32A4 here
            ...

    A compensator runs only when fitted (``QwTCompensator.active``) and
    switched on here. Returns ``model`` on ``__enter__``.
    """

    def __init__(self, model: nn.Module, weight: Optional[bool] = None,
                 act: Optional[bool] = None, qwt: Optional[bool] = None):
        self.model = model
        switches: List[Tuple[nn.Module, Optional[bool]]] = [
            (q, weight if q.role == 'weight' else act)
            for _, q in iter_quantizers(model)]
        switches += [(c, qwt) for c in model.modules()
                     if isinstance(c, QwTCompensator)]
        self._saved = [(m, m.enabled) for m, flag in switches
                       if flag is not None]
        for m, flag in switches:
            if flag is not None:
                m.enabled = flag

    def __enter__(self) -> nn.Module:
        return self.model

    def __exit__(self, *exc) -> None:
        for m, enabled in self._saved:
            m.enabled = enabled


@contextlib.contextmanager
def calibration(model: nn.Module, role: str = 'act'):
    """Within the block, the ``role`` quantizers observe (and pass data
    through unchanged); on normal exit each sets its step from what it saw,
    reduced over ranks. Quantizers of the other role keep their state."""
    named = list(iter_quantizers(model, role))
    qs = [q for _, q in named]
    for q in qs:
        q.start_observing()
    try:
        yield qs
    except BaseException:
        for q in qs:
            q.stop_observing()
        raise
    # the ranks agree on which quantizers saw nothing, so every rank raises
    # the same error (one rank alone would leave the others waiting in the
    # steps' all_reduce until the timeout); no-op in one process
    missing = torch.tensor([float(not q.saw_data) for q in qs],
                           device=qs[0].step.device if qs else None)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(missing, op=dist.ReduceOp.MAX)
    if bool(missing.any()):
        for q in qs:
            q.stop_observing()
        bad = [(n, q) for (n, q), m in zip(named, missing.tolist()) if m]
        name, q = bad[0]
        raise RuntimeError(
            f'{len(bad)} quantizer(s) saw no data during calibration (on at '
            f'least one rank), the first {name or "one"} ({q.extra_repr()}): '
            "is its module reached by forward, on every rank's batches?")
    for q in qs:
        q.finish_calibration()


@contextlib.contextmanager
def composed_paths(model: nn.Module):
    """Within the block every quantizer is called by its site (the fused
    Linear / q-k-v / attention functions stand aside), so forward hooks on
    the quantizers see every quantized tensor. Same values up to float
    rounding; slower and more memory in training."""
    qs = [q for _, q in iter_quantizers(model)]
    saved = [q.fuse for q in qs]
    for q in qs:
        q.fuse = False
    try:
        yield qs
    finally:
        for q, f in zip(qs, saved):
            q.fuse = f
