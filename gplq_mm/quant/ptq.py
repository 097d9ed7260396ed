"""Post-training steps on a converted model: the weights' clipping search,
and folding a per-channel scale into the layer that produces the channels
(deployable mode's activation steps, RepQ's reparameterization)."""
from typing import Optional, Sequence

import torch
import torch.nn as nn

from . import functional as QF
from .hosts import fold_pairs
from .layers import is_quant_layer

__all__ = ['quantize_weights', 'fold_channel_scale', 'fold_act_steps']


@torch.no_grad()
def quantize_weights(model: nn.Module,
                     candidates: Sequence[float] = (0.999, 0.9999, 0.99999,
                                                    1.0)) -> int:
    """Set every weight quantizer's per-channel step by the L2 clipping
    search (:func:`~gplq_mm.quant.functional.search_weight_step`).
    Returns the number of layers."""
    n = 0
    for mod in model.modules():
        if is_quant_layer(mod):
            wq = mod.weight_quantizer  # per output channel, along its axis
            wq.set_step(
                QF.search_weight_step(mod.weight.transpose(0, wq.axis),
                                      wq.qmin, wq.qmax, candidates))
            n += 1
    return n


def _channel_shape(mod: nn.Module, axis: int) -> list:
    shape = [1] * mod.weight.dim()
    shape[axis] = -1
    return shape


@torch.no_grad()
def fold_channel_scale(producer: nn.Module, consumer: nn.Module,
                       r: torch.Tensor,
                       shift: Optional[torch.Tensor] = None) -> None:
    """Re-express channel ``c`` between ``producer`` and ``consumer`` as
    ``(y_c - shift_c) / r_c`` (``r > 0``) without changing the function: the
    producer's output channels (its weight along the output axis and its
    bias, a LayerNorm's affine too) take the scale and shift, the
    consumer's input columns the inverse (``W' = W diag(r)``, ``b' = b + W
    shift``). A producer followed by ReLU takes no shift (ReLU commutes
    with positive scales only); a shift needs a Linear consumer.

    The one implementation of a fold: deployable mode's activation steps
    (:func:`fold_act_steps`) and RepQ's reparameterization
    (:mod:`~gplq_mm.quant.repq`) both call it.
    """
    if shift is not None:
        if not isinstance(consumer, nn.Linear):
            raise ValueError('fold_channel_scale: a shift folds into a '
                             f'Linear, not a {type(consumer).__name__}')
        if consumer.bias is None:
            consumer.bias = nn.Parameter(
                torch.zeros_like(consumer.weight[:, 0]))
        consumer.bias.add_(consumer.weight.float() @ shift.float())
    # (in, out, ...) weights of a transposed conv, (out, in, ...) others
    in_axis = 0 if isinstance(consumer, nn.ConvTranspose2d) else 1
    consumer.weight.mul_(r.view(_channel_shape(consumer, in_axis)).to(
        consumer.weight.dtype))
    out_axis = 1 if isinstance(producer, nn.ConvTranspose2d) else 0
    producer.weight.div_(r.view(_channel_shape(producer, out_axis)).to(
        producer.weight.dtype))
    if shift is not None and getattr(producer, 'bias', None) is None:
        producer.bias = nn.Parameter(torch.zeros_like(producer.weight))
    if getattr(producer, 'bias', None) is not None:
        if shift is not None:
            producer.bias.sub_(shift.to(producer.bias.dtype))
        producer.bias.div_(r.to(producer.bias.dtype))


@torch.no_grad()
def fold_act_steps(model: nn.Module) -> int:
    """Fold the per-channel input steps ``s`` of each layer whose input a
    single producer feeds (:func:`~gplq_mm.quant.hosts.fold_pairs`: a
    LayerNorm, or a layer followed by ReLU only) into that producer
    (:func:`fold_channel_scale` with ``r = s / mean(s)``): every step
    becomes ``mean(s)``, the integer codes and the float function are
    unchanged (up to float rounding), and the layer needs one input scale,
    as an integer kernel does. Run it before the weights are quantized.
    Idempotent. Returns the number of layers folded."""
    n = 0
    for src_name, dst_name in fold_pairs(model):
        src, dst = model.get_submodule(src_name), model.get_submodule(
            dst_name)
        iq = getattr(dst, 'input_quantizer', None)
        if (iq is None or iq.step.numel() == 1 or not bool(iq.initialized)
                or getattr(src, 'weight', None) is None):
            continue
        s = iq.step.detach()
        fold_channel_scale(src, dst, s / s.mean())
        iq.set_step(s.mean())
        n += 1
    return n
