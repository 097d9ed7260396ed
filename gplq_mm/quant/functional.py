"""Quantization numerics as small pure functions.

Every function here is stateless and has no autograd of its own; the
autograd functions built on them are in :mod:`gplq_mm.quant.fused`, and
:class:`~gplq_mm.quant.quantizer.FakeQuantizer` only holds state.

Conventions:
    * ``step`` has one entry per quantization group and is reshaped with
      :func:`broadcast_shape` so that it broadcasts against ``x`` along
      ``axis`` (``step.numel() == 1`` means per-tensor).
    * The integer grid is ``[qmin, qmax]`` from :func:`qrange`.
    * A step comes from a range ``(lo, hi)`` per group
      (:func:`minmax_range` or :func:`percentile_range`) through
      :func:`step_from_range`, during calibration and in the tests alike.
"""
from typing import Optional, Sequence, Tuple

import torch

__all__ = [
    'qrange', 'broadcast_shape', 'codes', 'fake_quant', 'patchify',
    'log2_quant', 'log_sqrt2_quant', 'LOG_GRIDS', 'lsq_grad_scale',
    'step_dtype',
    'lsq_backward', 'group_rows', 'minmax_range', 'percentile_range',
    'step_from_range', 'search_weight_step'
]


def qrange(bits: int, signed: bool) -> Tuple[int, int]:
    """Integer grid of a ``bits``-bit quantizer.

    Examples:
        >>> qrange(4, signed=True)
        (-8, 7)
        >>> qrange(4, signed=False)
        (0, 15)
    """
    if signed:
        return -(2**(bits - 1)), 2**(bits - 1) - 1
    return 0, 2**bits - 1


def broadcast_shape(ndim: int, axis: int, numel: int) -> Tuple[int, ...]:
    """Shape that makes a ``(numel,)`` step broadcast along ``axis``.

    Examples:
        >>> broadcast_shape(3, -1, 8)   # (B, N, C) per input channel
        (1, 1, 8)
        >>> broadcast_shape(4, 1, 3)    # (B, C, H, W) per channel
        (1, 3, 1, 1)
        >>> broadcast_shape(4, 1, 1)    # per-tensor
        (1,)
        >>> broadcast_shape(3, -1, -1)  # any number of steps along -1
        (1, 1, -1)
    """
    if numel == 1:
        return (1, )
    shape = [1] * ndim
    shape[axis] = numel
    return tuple(shape)


def step_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a step divides ``x`` in: ``x``'s, but float32 for
    float16, whose range rounds a small step (the 1e-8 floor of
    :func:`step_from_range`, a dead channel's, an LSQ step trained small)
    to 0, so ``x / s`` would be Inf or NaN. bfloat16 has float32's range."""
    return torch.float32 if x.dtype == torch.float16 else x.dtype


def codes(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int,
          axis: Optional[int] = None) -> torch.Tensor:
    """Integer codes ``clamp(round(x / s), qmin, qmax)`` (in ``x``'s dtype;
    a float16 ``x`` is divided in float32, :func:`step_dtype`).

    ``step`` broadcasts against ``x`` as given, or, with ``axis``, is
    reshaped to one entry per index of ``axis`` (or one in all).

    Examples:
        >>> codes(torch.tensor([0.26, -1.0, 0.9]), torch.tensor(0.1), -8, 7)
        tensor([ 3., -8.,  7.])
        >>> codes(torch.tensor([[1., 1.], [1., 1.]]),
        ...       torch.tensor([0.5, 0.25]), -8, 7, axis=0)
        tensor([[2., 2.],
                [4., 4.]])
    """
    dt = step_dtype(x)
    step = step.to(dt)
    if axis is not None:  # no step.numel(): a traced export asks no size
        step = step.reshape(broadcast_shape(x.dim(), axis, -1))
    return torch.clamp(torch.round(x.to(dt) / step), qmin, qmax).to(x.dtype)


def fake_quant(x: torch.Tensor, step: torch.Tensor, qmin: int,
               qmax: int) -> torch.Tensor:
    """Uniform fake quantization ``codes(x, s) * s``
    (:func:`codes`).

    ``step`` must already broadcast against ``x``.

    Examples:
        >>> fake_quant(torch.tensor([0.26, -1.0, 0.9]), torch.tensor(0.1),
        ...            -8, 7)
        tensor([ 0.3000, -0.8000,  0.7000])
    """
    dt = step_dtype(x)
    return (codes(x, step, qmin, qmax).to(dt) * step.to(dt)).to(x.dtype)


def patchify(x: torch.Tensor, kernel: Tuple[int, int]) -> torch.Tensor:
    """Non-overlapping ``kernel`` patches of ``(B, C, H, W)`` as rows
    ``(B, patches, C * kh * kw)``, patches row-major, each flattened as a
    conv weight ``(C, kh, kw)`` is: a patch embedding is then a matmul.

    Examples:
        >>> x = torch.arange(16.).reshape(1, 1, 4, 4)
        >>> patchify(x, (2, 2))[0]
        tensor([[ 0.,  1.,  4.,  5.],
                [ 2.,  3.,  6.,  7.],
                [ 8.,  9., 12., 13.],
                [10., 11., 14., 15.]])
    """
    (kh, kw), (h, w) = kernel, x.shape[-2:]
    b, c = x.shape[:2]
    if (kh, kw) == (1, 1):  # the same rows by a 3-D Transpose: onnxruntime
        # ran the 6-D one below ~30x slower than a 4-D one of the same bytes
        return x.flatten(2).transpose(1, 2)
    return x.reshape(b, c, h // kh, kh, w // kw, kw).permute(
        0, 2, 4, 1, 3, 5).reshape(b, (h // kh) * (w // kw), c * kh * kw)


def log2_quant(x: torch.Tensor, step: torch.Tensor,
               levels: int) -> torch.Tensor:
    """Log2 fake quantization of non-negative ``x`` on ``levels`` codes: ``s *
    2^-k`` for ``k = 0 .. levels - 2``, and zero. ``x`` is rounded to the
    nearest power of two (in the log domain) below ``s``; values under ``s *
    2^-(levels - 1.5)`` become 0.

    Examples:
        >>> log2_quant(torch.tensor([1.0, 0.3, 0.2, 0.1]), torch.tensor(1.0),
        ...            levels=4)  # codes 1, .5, .25, 0
        tensor([1.0000, 0.2500, 0.2500, 0.0000])
    """
    k = torch.round(-torch.log2((x / step).clamp(min=1e-30)))
    out = step * torch.exp2(-k.clamp(min=0))
    return torch.where(k > levels - 2, torch.zeros_like(out), out)


def log_sqrt2_quant(x: torch.Tensor, step: torch.Tensor,
                    levels: int) -> torch.Tensor:
    """RepQ-ViT's log-sqrt(2) fake quantization of non-negative ``x``:
    ``s * sqrt(2)^-k`` for ``k = round(-2 log2(x / s))`` clamped to
    ``0 .. levels - 1``, and zero where ``k >= levels`` (as RepQ-ViT's
    ``LogSqrt2Quantizer``: its ``levels`` codes are all non-zero values).

    Examples:
        >>> log_sqrt2_quant(torch.tensor([1.0, 0.6, 0.45, 0.3, 0.2]),
        ...                 torch.tensor(1.0), levels=4)
        tensor([1.0000, 0.7071, 0.5000, 0.3536, 0.0000])
    """
    k = torch.round(-2 * torch.log2((x / step).clamp(min=1e-30)))
    out = step * torch.exp2(-0.5 * k.clamp(min=0))
    return torch.where(k >= levels, torch.zeros_like(out), out)


# the log grids: unsigned, a fixed step that is the grid's largest value
LOG_GRIDS = {'log2': log2_quant, 'log_sqrt2': log_sqrt2_quant}


def lsq_grad_scale(numel_per_step: int, qmax: int) -> float:
    """LSQ step-gradient scale ``g = 1 / sqrt(numel_per_step * Qp)``.

    Examples:
        >>> lsq_grad_scale(16, 4)
        0.125
    """
    return 1.0 / float(max(numel_per_step * max(qmax, 1), 1))**0.5


def lsq_backward(x: torch.Tensor, step: torch.Tensor, grad_xq: torch.Tensor,
                 qmin: int, qmax: int, shape: Tuple[int, ...],
                 grad_scale: float, need_x: bool = True,
                 need_step: bool = True) -> tuple:
    """LSQ gradients ``(grad_x, grad_step)`` of ``fake_quant(x, step)`` given
    the gradient ``grad_xq`` of its output (None where not needed).

    ``grad_x``: straight-through inside the grid, 0 where clipped.
    ``grad_step``: per element ``round(x/s) - x/s`` inside, ``qmin`` /
    ``qmax`` where clipped, times ``grad_xq``, summed per group and scaled by
    ``grad_scale`` (:func:`lsq_grad_scale`).

    Examples:
        x = [0.26, -1.0, 0.9], s = 0.1, 4-bit signed, dy = 1: x/s = [2.6, -10,
        9], so dx = [1, 0, 0] and ds = g * ((3 - 2.6) - 8 + 7) = -0.6 g.

        >>> x, s = torch.tensor([0.26, -1.0, 0.9]), torch.tensor([0.1])
        >>> gx, gs = lsq_backward(x, s, torch.ones(3), -8, 7, (1,), 1.0)
        >>> gx
        tensor([1., 0., 0.])
        >>> round(gs.item(), 4)
        -0.6
    """
    v = x.to(step_dtype(x)) / step.to(step_dtype(x)).view(shape)
    low, high = v <= qmin, v >= qmax
    grad_x = grad_xq.masked_fill(low | high, 0) if need_x else None
    grad_step = None
    if need_step:
        ds = torch.where(low, float(qmin),
                         torch.where(high, float(qmax), torch.round(v) - v))
        ds = (ds * grad_xq).float()
        if step.numel() == 1:
            grad_step = ds.sum().reshape(step.shape)
        else:
            dims = [d for d in range(x.dim()) if shape[d] == 1]
            grad_step = ds.sum(dim=dims).reshape(step.shape)
        grad_step = (grad_step * grad_scale).to(step.dtype)
    return grad_x, grad_step


def group_rows(x: torch.Tensor, axis: Optional[int]) -> torch.Tensor:
    """``x`` as float rows, one per group: ``axis`` first and the rest
    flattened, ``(C, -1)``; ``(1, -1)`` when ``axis`` is None (per-tensor).

    Examples:
        >>> group_rows(torch.arange(6.).reshape(2, 3), axis=-1)
        tensor([[0., 3.],
                [1., 4.],
                [2., 5.]])
    """
    x = x.detach().float()
    if axis is None:
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


def minmax_range(x: torch.Tensor,
                 axis: Optional[int] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(min, max)`` per group (see :func:`group_rows`).

    Examples:
        >>> minmax_range(torch.tensor([[-2., 1.], [0.5, 7.]]), axis=0)
        (tensor([-2.0000,  0.5000]), tensor([1., 7.]))
    """
    rows = group_rows(x, axis)
    return rows.amin(dim=1), rows.amax(dim=1)


def _kth(rows: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row ``q``-quantile (nearest rank; no size limit, unlike
    ``torch.quantile``)."""
    n = rows.shape[1]
    k = min(max(int(round(q * (n - 1))) + 1, 1), n)
    return rows.kthvalue(k, dim=1).values


def percentile_range(x: torch.Tensor,
                     axis: Optional[int] = None,
                     low: float = 0.01,
                     high: float = 0.99
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(P_low, P_high)`` per group, nearest-rank percentiles.

    Examples:
        >>> percentile_range(torch.arange(101.))   # 0 .. 100
        (tensor([1.]), tensor([99.]))
    """
    rows = group_rows(x, axis)
    return _kth(rows, low), _kth(rows, high)


def step_from_range(lo: torch.Tensor, hi: torch.Tensor, qmax: int,
                    signed: bool) -> torch.Tensor:
    """Symmetric step of a grid whose largest code is ``qmax`` (1 for a log
    grid, whose step is its largest value): ``max(|lo|, |hi|) / qmax``
    when signed, ``max(hi, 0) / qmax`` otherwise; at least 1e-8.

    Examples:
        >>> step_from_range(torch.tensor([-2., 0.5]), torch.tensor([1., 7.]),
        ...                 7, signed=True)
        tensor([0.2857, 1.0000])
        >>> step_from_range(torch.tensor([-2.]), torch.tensor([6.]), 15,
        ...                 signed=False)
        tensor([0.4000])
    """
    amax = torch.maximum(lo.abs(), hi.abs()) if signed else hi.clamp(min=0)
    return (amax / qmax).clamp(min=1e-8)


def search_weight_step(
    w: torch.Tensor,
    qmin: int,
    qmax: int,
    candidates: Sequence[float] = (0.999, 0.9999, 0.99999, 1.0)
) -> torch.Tensor:
    """Per-output-channel (axis 0) step minimizing the L2 quantization error.

    Each channel's clipping value is one of the ``candidates`` percentiles of
    ``|w|`` in that channel; the one with the lowest
    ``||w - fake_quant(w)||^2`` wins.

    Examples:
        >>> w = torch.tensor([[1., 0.1, -0.2, 0.05], [0.5, -0.5, 0.25, 0.]])
        >>> search_weight_step(w, -8, 7, candidates=(0.5, 1.0))
        tensor([0.1429, 0.0714])
    """
    w2 = group_rows(w, 0)
    aw = w2.abs()
    best_err = torch.full((w2.shape[0], ), float('inf'), device=w.device)
    best = torch.ones(w2.shape[0], device=w.device)
    for c in candidates:
        step = (_kth(aw, c) / qmax).clamp(min=1e-8)
        err = (fake_quant(w2, step[:, None], qmin, qmax) -
               w2).pow(2).sum(dim=1)
        better = err < best_err
        best = torch.where(better, step, best)
        best_err = torch.where(better, err, best_err)
    return best
