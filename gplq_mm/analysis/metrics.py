"""The numbers of the quantization report, as small pure functions.

Tensors are reduced to sums first (:func:`error_sums`, :func:`clip_counts`,
:func:`group_amax`), which add up over batches; the report's numbers are
computed from the totals (:func:`sqnr_db`, :func:`rel_l2_cosine`,
:func:`range_over_grid`).
"""
import math
from typing import Optional, Tuple

import torch

from ..quant.functional import codes, group_rows

__all__ = ['error_sums', 'sqnr_db', 'rel_l2_cosine', 'clip_counts',
           'group_amax', 'range_over_grid']


def error_sums(ref: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[sum ref^2, sum y^2, sum ref * y, sum (y - ref)^2]`` in float64, on
    the CPU (they add up over batches whatever device ``ref`` is on).

    Examples:
        >>> error_sums(torch.tensor([3., 4.]), torch.tensor([3., 4.5]))
        tensor([25.0000, 29.2500, 27.0000,  0.2500], dtype=torch.float64)
    """
    ref, y = ref.detach().double().flatten(), y.detach().double().flatten()
    return torch.stack([ref @ ref, y @ y, ref @ y,
                        (y - ref) @ (y - ref)]).cpu()


def sqnr_db(sums: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (xq -
    x)^2)`` in dB from :func:`error_sums` ``(x, xq)``; ``inf`` when nothing
    changed.

    Examples:
        >>> sqnr_db(error_sums(torch.tensor([3., 4.]),
        ...                    torch.tensor([3., 4.5])))   # 25 / 0.25
        20.0
    """
    signal, noise = float(sums[0]), float(sums[3])
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def rel_l2_cosine(sums: torch.Tensor) -> Tuple[float, float]:
    """``(||y - ref|| / ||ref||, cos(ref, y))`` from :func:`error_sums`.

    Examples:
        >>> rel, cos = rel_l2_cosine(error_sums(torch.tensor([1., 0.]),
        ...                                     torch.tensor([1., 1.])))
        >>> rel, round(cos, 4)
        (1.0, 0.7071)
    """
    r2, y2, dot, e2 = (float(v) for v in sums)
    rel = math.sqrt(e2 / r2) if r2 > 0 else math.inf
    cos = dot / math.sqrt(r2 * y2) if r2 > 0 and y2 > 0 else 0.0
    return rel, cos


def clip_counts(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int,
                axis: int = -1) -> torch.Tensor:
    """``[n clipped low, n clipped high, n]``: elements of ``x`` that the
    uniform grid clips at its ends, ``round(x / s) < qmin`` and ``> qmax``.

    Examples:
        >>> clip_counts(torch.tensor([-1.0, -0.5, 0.2, 0.9]),
        ...             torch.tensor([0.1]), -8, 7)  # -10 | -5, 2 | 9
        tensor([1., 1., 4.], dtype=torch.float64)
    """
    # codes on a grid one wider at each end: its ends are the clipped ones
    v = codes(x.detach().float(), step.detach().float(), qmin - 1, qmax + 1,
              axis)
    return torch.tensor([float((v < qmin).sum()), float((v > qmax).sum()),
                         float(x.numel())], dtype=torch.float64)


def group_amax(x: torch.Tensor, groups: int,
               axis: Optional[int] = -1) -> torch.Tensor:
    """``max |x|`` per quantization group (``groups`` steps along ``axis``;
    one group: the whole tensor)."""
    return group_rows(x, None if groups == 1 else axis).abs().amax(dim=1)


def range_over_grid(amax: torch.Tensor, step: torch.Tensor,
                    qmax: int) -> torch.Tensor:
    """Per group: the observed ``max |x|`` over the grid's largest value
    ``step * qmax``. Above 1 the group is clipped; far below 1 it leaves
    levels unused.

    Examples:
        >>> x = torch.tensor([[1.4, -0.35], [0.7, 0.1]])
        >>> range_over_grid(group_amax(x, 2), torch.tensor([0.1, 0.05]), 7)
        tensor([2., 1.])
    """
    return amax.float() / (step.detach().float().reshape(-1) * qmax)
