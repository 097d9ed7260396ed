"""How far training moved the weights from the FP32 checkpoint: the basin
measurement of the paper (Table 7, mean per-layer MAE / MSE of the weights
against FP32)."""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from ..quant.layers import is_quant_layer

__all__ = ['weight_drift', 'drift_numbers']


def drift_numbers(w: torch.Tensor, w_fp: torch.Tensor) -> Dict[str, float]:
    """``mae = mean |w - w_fp|``, ``mse = mean (w - w_fp)^2`` and
    ``rel_mae = mae / mean |w_fp|`` (0 when nothing moved), in float64.

    Examples:
        >>> drift_numbers(torch.tensor([1.5, -2.]), torch.tensor([1., -2.]))
        {'mae': 0.25, 'mse': 0.125, 'rel_mae': 0.16666666666666666}
    """
    w_fp = w_fp.detach().double()
    d = w.detach().double().to(w_fp.device) - w_fp
    mae, scale = float(d.abs().mean()), float(w_fp.abs().mean())
    rel = mae / scale if scale > 0 else (0.0 if mae == 0 else float('inf'))
    return dict(mae=mae, mse=float(d.pow(2).mean()), rel_mae=rel)


@torch.no_grad()
def weight_drift(student: nn.Module, teacher: nn.Module,
                 layers: Optional[Sequence[str]] = None) -> Dict:
    """Per-layer drift of ``student``'s latent weights from ``teacher``'s.

    ``student`` is a converted host model (``GPLQModel.student``), ``teacher``
    the float model of the same architecture holding the FP32 checkpoint
    (``GPLQModel.teacher``). Every quantized layer of the student (a
    :class:`~gplq_mm.quant.QuantLinear` / :class:`~gplq_mm.quant.QuantConv2d`,
    i.e. one with a weight quantizer) is compared with the teacher's module
    of the same name, on its weight tensor (not the bias):
    :func:`drift_numbers` (``rel_mae`` compares across model sizes).
    ``layers`` names the layers to compare instead (e.g. a float model's
    Linear / Conv2d layers, which no quantizer marks).

    The latent weights are the ones the optimizer trains, never the
    fake-quantized ones; a method that re-expresses them without changing
    the float function (RepQ's reparameterization, a deployable model's
    folded channel scales) drifts by what it re-expressed.

    Returns:
        dict: ``layers`` (one ``dict(name, numel, mae, mse, rel_mae)`` per
        layer, in network order) and their means over layers, ``mae_mean``,
        ``mse_mean`` and ``rel_mae_mean``. The FP32 model against itself
        drifts by exactly 0.
    """
    if layers is None:
        layers = [n for n, m in student.named_modules() if is_quant_layer(m)]
    rows: List[dict] = []
    for name in layers:
        mod = student.get_submodule(name)
        try:
            ref = teacher.get_submodule(name).weight
        except AttributeError:
            raise ValueError(
                f'weight_drift: the teacher has no layer {name!r} with a '
                'weight; build it from the same architecture as the '
                'student') from None
        if ref.shape != mod.weight.shape:
            raise ValueError(
                f'weight_drift: {name}.weight is {tuple(mod.weight.shape)} '
                f'in the student, {tuple(ref.shape)} in the teacher')
        rows.append(dict(name=name, numel=ref.numel(),
                         **drift_numbers(mod.weight, ref)))
    if not rows:
        raise ValueError('weight_drift: the student has no quantized layer '
                         '(pass a converted model, GPLQModel.student, or '
                         'name the layers)')
    return dict(layers=rows, **{
        f'{k}_mean': sum(r[k] for r in rows) / len(rows)
        for k in ('mae', 'mse', 'rel_mae')})
