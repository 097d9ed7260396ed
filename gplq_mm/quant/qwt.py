"""QwT ("Quantization without Tears") compensation: one linear layer per
transformer block, ``out = block_q(x) + x W_c + b_c``, fitted in closed form.
"""
import time
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .hosts import block_width

__all__ = ['QwTCompensator', 'compensator', 'attach_compensator',
           'detach_compensator',
           'QwTStats', 'fit_qwt']


class QwTCompensator(nn.Module):
    """``x -> x @ weight.T + bias``, added to its block's output while
    ``active`` (a persisted flag set by the fit) and ``enabled`` (a runtime
    switch, e.g. to evaluate without QwT).

    :func:`attach_compensator` registers it as ``block.qwt`` with a forward
    hook on the block (the handle is kept here, for
    :func:`detach_compensator`)."""

    def __init__(self, dim: int, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim, dim, device=device),
                                   requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(dim, device=device),
                                 requires_grad=False)
        self.register_buffer('active',
                             torch.zeros((), dtype=torch.bool, device=device))
        self.enabled = True
        self._active = False  # python mirror of `active`
        self.handle = None

    @property
    def on(self) -> bool:
        return self._active and self.enabled

    def set_active(self, flag: bool) -> None:
        self.active.fill_(flag)
        self._active = flag

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # nn.Module's documented override point for custom loading.
        if not any(k.startswith(prefix) for k in state_dict):
            return  # a float / Stage-1 checkpoint: nothing fitted yet
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._active = bool(self.active)


def _compensate(block: nn.Module, args: tuple, output: torch.Tensor):
    """Forward hook of a compensated block: ``output + qwt(input)``."""
    comp = block.qwt
    return output + comp(args[0]) if comp.on else output


def compensator(block: nn.Module) -> Optional[QwTCompensator]:
    """``block``'s compensator, or None."""
    comp = getattr(block, 'qwt', None)
    return comp if isinstance(comp, QwTCompensator) else None


def attach_compensator(block: nn.Module) -> QwTCompensator:
    """Add ``block.qwt`` and the forward hook that applies it
    (idempotent). The block must be registered in
    :mod:`gplq_mm.quant.hosts` (its width comes from there)."""
    if compensator(block) is not None:
        return block.qwt
    comp = QwTCompensator(block_width(block),
                          device=next(block.parameters()).device)
    block.qwt = comp
    comp.handle = block.register_forward_hook(_compensate)
    return comp


def detach_compensator(block: nn.Module) -> None:
    """Undo :func:`attach_compensator` (no-op for other modules)."""
    comp = compensator(block)
    if comp is not None:
        comp.handle.remove()
        del block.qwt


class _Moments:
    """Sums of the ridge regression ``T ~ [X, 1] W`` in float64:
    ``A = Xa^T Xa``, ``B = Xa^T T``, ``sum T^2``, ``sum T``, rows."""

    def __init__(self, dim_in: int, dim_out: int, device=None):
        kw = dict(dtype=torch.float64, device=device)
        self.A = torch.zeros(dim_in + 1, dim_in + 1, **kw)
        self.B = torch.zeros(dim_in + 1, dim_out, **kw)
        self.t2 = torch.zeros((), **kw)
        self.t1 = torch.zeros(dim_out, **kw)
        self.n = torch.zeros((), **kw)

    def tensors(self):
        return (self.A, self.B, self.t2, self.t1, self.n)

    def update(self, x: torch.Tensor, t: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()  # (tokens, D_in)
        t = t.reshape(-1, t.shape[-1]).double()  # (tokens, D_out)
        xa = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
        self.A += xa.T @ xa
        self.B += xa.T @ t
        self.t2 += t.pow(2).sum()
        self.t1 += t.sum(0)
        self.n += t.shape[0]

    def solve(self, ridge: float) -> torch.Tensor:
        d = self.A.shape[0]
        lam = ridge * torch.trace(self.A) / d
        eye = torch.eye(d, dtype=self.A.dtype, device=self.A.device)
        return torch.linalg.solve(self.A + lam * eye, self.B)

    def r2(self, w: torch.Tensor) -> float:
        """R^2 of the prediction ``Xa w`` on these rows."""
        sse = self.t2 - 2 * (w * self.B).sum() + (w * (self.A @ w)).sum()
        sst = self.t2 - (self.t1.pow(2) / self.n.clamp(min=1)).sum()
        return 1.0 - float(sse / sst) if float(sst) > 0 else 0.0


class QwTStats:
    """Sufficient statistics of one block's compensator fit.

    Images alternate between a fitting half and a held-out half, so the
    keep / drop test (R^2 > 0) is measured on images the fit did not see
    (in-sample R^2 of least squares with an intercept is never negative).
    The kept solution is then refitted on all images. The alternation
    follows the global image index of a sharded loader (rank ``r`` holds
    images ``r, r + world, ...``), so the halves do not depend on the number
    of processes.
    """

    def __init__(self, dim_in: int, dim_out: int, device=None):
        self.parts = (_Moments(dim_in, dim_out, device),
                      _Moments(dim_in, dim_out, device))
        self._images = 0
        dist_on = dist.is_available() and dist.is_initialized()
        self._rank = dist.get_rank() if dist_on else 0
        self._world = dist.get_world_size() if dist_on else 1

    def update(self, x: torch.Tensor, t: torch.Tensor) -> None:
        """``x``, ``t``: (images, ..., D), in loader order."""
        local = torch.arange(self._images, self._images + x.shape[0])
        held = ((local * self._world + self._rank) % 2 == 1).to(x.device)
        self._images += x.shape[0]
        for part, mask in ((self.parts[0], ~held), (self.parts[1], held)):
            if mask.any():
                part.update(x[mask], t[mask])

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            for part in self.parts:
                for v in part.tensors():
                    dist.all_reduce(v)

    def solve(self, ridge: float = 1e-4) -> Tuple[torch.Tensor, float]:
        """``W`` of shape ``(D_in + 1, D_out)`` (last row: bias), fitted on all
        images, and the held-out R^2 of the fit on the first half.

        ``W = (A + lam I)^-1 B`` with ``lam = ridge * trace(A) / (D_in + 1)``.
        """
        fit, held = self.parts
        if float(held.n) == 0:  # a single image: nothing held out
            w = fit.solve(ridge)
            return w, fit.r2(w)
        r2 = held.r2(fit.solve(ridge))
        total = _Moments(1, 1)
        total.A, total.B = fit.A + held.A, fit.B + held.B
        return total.solve(ridge), r2


class _Stop(Exception):
    pass


def _block_io(block: nn.Module, forward: Callable, batch) -> tuple:
    """``(args, kwargs, output)`` of ``block``'s call when ``forward(batch)``
    runs; the forward stops right after the block."""
    store = {}

    def hook(mod, args, kwargs, output):
        store['io'] = (args, kwargs, output)
        raise _Stop

    handle = block.register_forward_hook(hook, with_kwargs=True)
    try:
        forward(batch)
    except _Stop:
        pass
    finally:
        handle.remove()
    return store['io']


TARGETS = ('same_input', 'chained')


@torch.no_grad()
def fit_qwt(model: nn.Module,
            blocks: List[Tuple[str, nn.Module]],
            batches: Iterable,
            forward: Callable,
            ridge: float = 1e-4,
            target: str = 'same_input',
            logger: Optional[Callable[[str], None]] = None
            ) -> Dict[str, float]:
    """Fit the compensators of ``blocks`` in order (from scratch: every one
    is inactive until fitted).

    For block ``i`` and every batch, a W4A4 pass (weights quantized, blocks
    ``< i`` compensated) gives the block input ``X`` and output ``Y_q``. The
    reference output ``Y`` is, with ``target``:

    * ``'same_input'`` (the paper's Eq. 3 and the QwT authors' code): block
      ``i`` with FP32 weights on the same ``X``, so ``Y - Y_q`` is this
      block's own weight-quantization error;
    * ``'chained'``: block ``i``'s output in a separate W32A4 pass (all
      weights FP32, no compensation), so the target also carries the drift
      of the blocks before.

    ``[W_c; b_c]`` solves the ridge regression of ``Y - Y_q`` on ``[X, 1]``.
    A compensator is kept only if its R^2 > 0 on held-out calibration images
    (see :class:`QwTStats`). Each forward stops at block ``i``.

    Args:
        model: The module whose quantizers and compensators
            :class:`~gplq_mm.quant.set_quant_state` switches (the blocks'
            model); its state is restored on return.
        blocks: ``(name, block)`` in forward order, each with ``block.qwt``.
        batches: Re-iterable calibration inputs.
        forward: Runs the model on one batch.
        ridge: Relative ridge term (see :meth:`QwTStats.solve`).
        target: ``'same_input'`` or ``'chained'``.

    Returns:
        dict: block name -> held-out R^2 (kept where > 0).
    """
    from .state import set_quant_state  # state imports this module
    if target not in TARGETS:
        raise ValueError(f'QwT target={target!r}: use one of {TARGETS}')
    for _, block in blocks:
        block.qwt.set_active(False)
    r2s = {}
    t0 = time.time()
    with set_quant_state(model, weight=True, qwt=True):
        for i, (name, block) in enumerate(blocks):
            stats = None
            for batch in batches:
                if target == 'chained':
                    with set_quant_state(model, weight=False, qwt=False):
                        y_ref = _block_io(block, forward, batch)[2]  # W32A4
                # W4A4, the blocks before compensated (the rest unfitted)
                args, kwargs, y_q = _block_io(block, forward, batch)
                if target == 'same_input':
                    with set_quant_state(model, weight=False):
                        y_ref = block(*args, **kwargs)  # FP32 weights, same X
                x = args[0]
                if stats is None:
                    stats = QwTStats(x.shape[-1], y_ref.shape[-1],
                                     device=y_ref.device)
                stats.update(x, y_ref - y_q)
            stats.all_reduce()
            w, r2 = stats.solve(ridge)
            comp = block.qwt
            keep = r2 > 0
            comp.weight.copy_(w[:-1].T.to(comp.weight.dtype))
            comp.bias.copy_(w[-1].to(comp.bias.dtype))
            if not keep:
                comp.weight.zero_()
                comp.bias.zero_()
            comp.set_active(keep)
            r2s[name] = r2
            if logger:
                spent = time.time() - t0
                eta = spent / (i + 1) * (len(blocks) - i - 1)
                logger(f'QwT [{i + 1}/{len(blocks)}] {name}: R^2={r2:.4f} '
                       f'({"kept" if keep else "dropped"}), {spent:.0f}s, '
                       f'ETA {eta:.0f}s')
    return r2s
