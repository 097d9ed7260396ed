"""The one fake quantizer used at every site (weights, Linear inputs,
attention operands)."""
from typing import Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from . import functional as QF
from .fused import log_fake_quant, lsq_fake_quant

__all__ = ['FakeQuantizer']

GRANULARITIES = ('tensor', 'channel')
GRIDS = ('uniform', *QF.LOG_GRIDS)
INIT_METHODS = ('minmax', 'percentile')


class FakeQuantizer(nn.Module):
    """Uniform symmetric fake quantizer with an LSQ-learnable step.

    Args:
        bits (int): 2 to 8. Defaults to 4.
        signed (bool): Signed grid ``[-2^(b-1), 2^(b-1)-1]`` or unsigned
            ``[0, 2^b-1]``. Defaults to True.
        granularity (str): ``'tensor'`` (one step) or ``'channel'`` (one step
            per index of ``axis``). Defaults to ``'tensor'``.
        num_channels (int): Number of steps for ``'channel'``. Defaults to 1.
        axis (int): Axis of the groups for ``'channel'``. Defaults to -1.
        learnable (bool): Whether the step is trained by LSQ. Defaults to True.
        init (str): ``'minmax'`` (running min / max) or ``'percentile'`` (mean
            over batches of the ``percentile`` range) calibration.
            Defaults to ``'minmax'``.
        percentile (tuple): ``(low, high)`` for ``'percentile'``.
            Defaults to ``(0.01, 0.99)``.
        role (str): ``'act'`` or ``'weight'``; used by ``set_quant_state``.
            Defaults to ``'act'``.
        grid (str): ``'uniform'`` (LSQ), or a log grid for softmax outputs
            (unsigned, fixed step): ``'log2'`` (powers of two below the
            step) or ``'log_sqrt2'`` (RepQ-ViT's powers of sqrt(2)).
            Defaults to ``'uniform'``.
        device (torch.device, optional): Where the state is allocated.

    State: ``step`` (Parameter, shape ``(num_channels,)`` or ``(1,)``) and
    ``initialized`` (bool buffer) are in the state_dict. A state_dict without
    either key (a float checkpoint) leaves the quantizer as it is.
    """

    def __init__(self,
                 bits: int = 4,
                 signed: bool = True,
                 granularity: str = 'tensor',
                 num_channels: int = 1,
                 axis: int = -1,
                 learnable: bool = True,
                 init: str = 'minmax',
                 percentile: Tuple[float, float] = (0.01, 0.99),
                 role: str = 'act',
                 grid: str = 'uniform',
                 device: Optional[torch.device] = None):
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or \
                not 2 <= bits <= 8:
            raise ValueError(f'bits={bits!r} is not allowed: use an int in '
                             '2..8')
        for name, val, allowed in (('granularity', granularity, GRANULARITIES),
                                   ('init', init, INIT_METHODS),
                                   ('grid', grid, GRIDS),
                                   ('role', role, ('act', 'weight'))):
            if val not in allowed:
                raise ValueError(f'{name}={val!r} is not allowed: use one of '
                                 f'{allowed}')
        if grid != 'uniform':
            signed, learnable = False, False
        if granularity == 'tensor':
            num_channels = 1
        self.bits, self.signed, self.granularity = bits, signed, granularity
        self.axis, self.init, self.role = axis, init, role
        self.percentile, self.grid = tuple(percentile), grid
        self.qmin, self.qmax = QF.qrange(bits, signed)
        self.step = nn.Parameter(
            torch.ones(num_channels, device=device), requires_grad=learnable)
        self.register_buffer('initialized',
                             torch.zeros((), dtype=torch.bool, device=device))
        self.enabled = False
        self.observing = False
        self.fuse = True  # fused kernels may take the step (composed_paths)
        self._ready = False  # python mirror of `initialized`, avoids syncs
        self._stats = None  # (lo, hi, batches) while observing

    def extra_repr(self) -> str:
        return (f'bits={self.bits}, signed={self.signed}, '
                f'granularity={self.granularity}, channels='
                f'{self.step.numel()}, axis={self.axis}, role={self.role}, '
                f'grid={self.grid}, enabled={self.enabled}')

    @property
    def fusable(self) -> bool:
        """Quantizing with a uniform LSQ grid now (enabled, initialized, not
        observing, ``fuse`` allowed): fused functions may take this
        quantizer's step instead of calling it."""
        return (self.enabled and self._ready and not self.observing
                and self.fuse and self.grid == 'uniform')

    def fuses(self, axis: int) -> bool:
        """The one rule of the fused sites: a fused function that takes a
        step per index of ``axis`` (negative) or one step in all may compute
        this quantizer, which is :attr:`fusable` and quantizes per tensor
        or along ``axis``."""
        return self.fusable and (self.step.numel() == 1 or self.axis == axis)

    @property
    def active(self) -> bool:
        """Quantizing or observing: its site must run the quantized path."""
        return self.enabled or self.observing

    def check_ready(self) -> None:
        """Raise when enabled without a step (never calibrated or loaded)."""
        if self.enabled and not self._ready:
            raise RuntimeError(
                'A FakeQuantizer is enabled but not initialized: calibrate '
                'it (gplq_mm.quant.calibration) or load a checkpoint that '
                f'holds its step ({self.extra_repr()}).')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x)
            return x
        if not self.enabled:
            return x
        self.check_ready()
        if self.grid != 'uniform':
            return log_fake_quant(x, self.step, self.bits, self.axis,
                                  self.grid)
        return lsq_fake_quant(x, self.step, self.qmin, self.qmax, self.axis)

    # calibration -----------------------------------------------------------
    def start_observing(self) -> None:
        self.observing, self._stats = True, None

    def stop_observing(self) -> None:
        """Leave observation without setting the step."""
        self.observing, self._stats = False, None

    @property
    def saw_data(self) -> bool:
        """Whether it observed a tensor since :meth:`start_observing`."""
        return self._stats is not None

    def observe(self, x: torch.Tensor) -> None:
        """Accumulate the range of ``x``: running min / max (``minmax``) or
        the sum of per-batch percentile ranges (``percentile``)."""
        axis = None if self.step.numel() == 1 else self.axis
        if self.init == 'minmax':
            lo, hi = QF.minmax_range(x, axis)
            if self._stats is not None:
                lo = torch.minimum(self._stats[0], lo)
                hi = torch.maximum(self._stats[1], hi)
        else:
            lo, hi = QF.percentile_range(x, axis, *self.percentile)
            if self._stats is not None:
                lo, hi = self._stats[0] + lo, self._stats[1] + hi
        n = 1 if self._stats is None else self._stats[2] + 1
        self._stats = (lo, hi, n)

    @torch.no_grad()
    def finish_calibration(self) -> None:
        """Set the step from the observed range (reduced over all ranks when
        torch.distributed is initialized) and mark it initialized."""
        stats = self._stats
        self.stop_observing()
        if stats is None:
            raise RuntimeError(
                'FakeQuantizer saw no data during calibration '
                f'({self.extra_repr()}); is its module reached by forward?')
        lo, hi, n = stats
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
        # A log grid's step is its largest value; uniform: amax / qmax.
        top = 1 if self.grid != 'uniform' else self.qmax
        self.set_step(QF.step_from_range(lo, hi, top, self.signed))

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
        # nn.Module's documented override point for custom loading.
        keys = [prefix + 'step', prefix + 'initialized']
        if not any(k in state_dict for k in keys):
            return  # a float checkpoint: keep the current state
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._ready = bool(self.initialized)
