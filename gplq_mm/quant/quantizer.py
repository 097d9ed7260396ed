"""The one fake quantizer used at every site (weights, Linear inputs,
attention operands)."""
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from . import functional as QF

__all__ = ['FakeQuantizer']

GRANULARITIES = ('tensor', 'channel', 'token')
GRIDS = ('uniform', 'log2')
INIT_METHODS = ('minmax', 'percentile')


class FakeQuantizer(nn.Module):
    """Uniform symmetric fake quantizer with an LSQ-learnable step.

    Args:
        bits (int): 2 to 8. Defaults to 4.
        signed (bool): Signed grid ``[-2^(b-1), 2^(b-1)-1]`` or unsigned
            ``[0, 2^b-1]``. Defaults to True.
        granularity (str): ``'tensor'`` (one step), ``'channel'`` (one step per
            index of ``axis``) or ``'token'`` (the same along axis -2, the token
            axis of ``(..., N, C)``). Defaults to ``'tensor'``.
        num_channels (int): Number of steps for ``'channel'`` / ``'token'``.
        axis (int, optional): Axis of the groups. Defaults to -1 for
            ``'channel'`` and -2 for ``'token'``.
        learnable (bool): Whether the step is trained by LSQ. Defaults to True.
        init (str): ``'minmax'`` or ``'percentile'`` initialization.
        percentile (tuple): ``(low, high)`` for ``'percentile'``.
            Defaults to ``(0.01, 0.99)``.
        role (str): ``'act'`` or ``'weight'``; used by ``set_quant_state``.
        grid (str): ``'uniform'`` (LSQ) or ``'log2'`` (unsigned, powers of two
            below the step, fixed step; for softmax outputs).
            Defaults to ``'uniform'``.

    State: ``step`` (Parameter, shape ``(num_channels,)`` or ``(1,)``) and
    ``initialized`` (bool buffer) are in the state_dict. A state_dict without
    either key (a float checkpoint) leaves the quantizer as it is.
    """

    def __init__(self,
                 bits: int = 4,
                 signed: bool = True,
                 granularity: str = 'tensor',
                 num_channels: int = 1,
                 axis: Optional[int] = None,
                 learnable: bool = True,
                 init: str = 'minmax',
                 percentile=(0.01, 0.99),
                 role: str = 'act',
                 grid: str = 'uniform'):
        super().__init__()
        if not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f'bits={bits!r} is not allowed: use an int in '
                             '2..8')
        if granularity not in GRANULARITIES:
            raise ValueError(f'granularity={granularity!r} is not allowed: '
                             f'use one of {GRANULARITIES}')
        if init not in INIT_METHODS:
            raise ValueError(f'init={init!r} is not allowed: use one of '
                             f'{INIT_METHODS}')
        if grid not in GRIDS:
            raise ValueError(f'grid={grid!r} is not allowed: use one of '
                             f'{GRIDS}')
        if grid == 'log2':
            signed, learnable = False, False
        if granularity == 'tensor':
            num_channels = 1
        self.bits, self.signed, self.granularity = bits, signed, granularity
        self.axis = axis if axis is not None else (
            -2 if granularity == 'token' else -1)
        self.init, self.percentile, self.role = init, tuple(percentile), role
        self.grid = grid
        self.qmin, self.qmax = QF.qrange(bits, signed)
        self.step = nn.Parameter(
            torch.ones(num_channels), requires_grad=learnable)
        self.register_buffer('initialized', torch.zeros((), dtype=torch.bool))
        self.enabled = False
        self.observing = False
        self._ready = False  # python mirror of `initialized`, avoids syncs
        self._obs = None

    def extra_repr(self) -> str:
        return (f'bits={self.bits}, signed={self.signed}, '
                f'granularity={self.granularity}, channels='
                f'{self.step.numel()}, axis={self.axis}, role={self.role}, '
                f'grid={self.grid}, '
                f'enabled={self.enabled}')

    @property
    def fusable(self) -> bool:
        """Quantizing with a uniform LSQ grid now (enabled, initialized, not
        observing): fused functions may take this quantizer's step."""
        return (self.enabled and self._ready and not self.observing
                and self.grid == 'uniform')

    @property
    def _reduce_axis(self) -> Optional[int]:
        return None if self.step.numel() == 1 else self.axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self._observe(x)
            return x
        if not self.enabled:
            return x
        if not self._ready:
            raise RuntimeError(
                'A FakeQuantizer is enabled but not initialized: calibrate '
                'it (gplq_mm.quant.calibrate) or load a checkpoint that '
                f'holds its step ({self.extra_repr()}).')
        if self.grid == 'log2':
            return QF.log2_fake_quant(x, self.step, self.bits, self.axis)
        return QF.lsq_fake_quant(x, self.step, self.qmin, self.qmax,
                                 self.axis)

    # calibration -----------------------------------------------------------
    def _observe(self, x: torch.Tensor) -> None:
        """Accumulate statistics: running min/max (``minmax``) or the mean of
        per-batch percentiles (``percentile``)."""
        x2 = QF._reduce_dims(x.detach().float(), self._reduce_axis)
        if self.init == 'minmax':
            lo, hi = x2.amin(dim=1), x2.amax(dim=1)
            if self._obs is None:
                self._obs = [lo, hi, 1]
            else:
                self._obs = [
                    torch.minimum(self._obs[0], lo),
                    torch.maximum(self._obs[1], hi), self._obs[2] + 1
                ]
        else:
            lo = QF._kth(x2, self.percentile[0])
            hi = QF._kth(x2, self.percentile[1])
            if self._obs is None:
                self._obs = [lo, hi, 1]
            else:
                self._obs = [self._obs[0] + lo, self._obs[1] + hi,
                             self._obs[2] + 1]

    @torch.no_grad()
    def finish_calibration(self) -> None:
        """Set the step from the observed statistics (reduced over all ranks
        when torch.distributed is initialized) and mark it initialized."""
        self.observing = False
        if self._obs is None:
            raise RuntimeError(
                'FakeQuantizer saw no data during calibration '
                f'({self.extra_repr()}); is its module reached by forward?')
        lo, hi, n = self._obs
        self._obs = None
        if self.init == 'percentile':
            lo, hi = lo / n, hi / n
        if dist.is_available() and dist.is_initialized():
            if self.init == 'minmax':
                dist.all_reduce(lo, op=dist.ReduceOp.MIN)
                dist.all_reduce(hi, op=dist.ReduceOp.MAX)
            else:
                ws = dist.get_world_size()
                dist.all_reduce(lo)
                dist.all_reduce(hi)
                lo, hi = lo / ws, hi / ws
        amax = torch.maximum(lo.abs(), hi.abs()) if self.signed else \
            hi.clamp(min=0)
        # The log2 grid's step is its largest value; uniform: amax / qmax.
        div = 1 if self.grid == 'log2' else self.qmax
        self.set_step((amax / div).clamp(min=1e-8))

    @torch.no_grad()
    def set_step(self, step: torch.Tensor) -> None:
        """Set the step (broadcast from a scalar if needed) and mark it
        initialized."""
        self.step.copy_(step.reshape(-1).expand_as(self.step))
        self.initialized.fill_(True)
        self._ready = True

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs):
        keys = [prefix + 'step', prefix + 'initialized']
        if not any(k in state_dict for k in keys):
            return  # a float checkpoint: keep the current state
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._ready = bool(self.initialized)
