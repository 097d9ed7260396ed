"""The export form of a converted model, a separate step as convert is:
:func:`prepare_export` swaps each quantized site for its export module,
which computes the same values with the ONNX-exportable functions of
:mod:`gplq_mm.quant.qdq` (QuantizeLinear / DequantizeLinear, integer
kernels), and restores the training modules on exit. The training
forwards never ask whether they are being exported.

What is swapped: every enabled :class:`FakeQuantizer` (a disabled one
becomes ``nn.Identity``), every quantized layer whose weights are quantized
(its input quantizer with it), and the attention stand-ins that own their
attention math (:class:`~gplq_mm.quant.attention.QuantSDPA`). A layer with
float weights keeps its module (only its quantizer is swapped); with every
quantizer off (the FP32 form) nothing is swapped.
"""
import contextlib
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from . import qdq
from .attention import QuantSDPA, composed_attention, sdpa_multiplier
from .layers import (
    QuantConv2d,
    QuantConvTranspose2d,
    QuantLinear,
    QuantQKV,
    quantize_qkv,
)
from .quantizer import FakeQuantizer

__all__ = ['prepare_export', 'ExportQuantizer', 'ExportLinear', 'ExportQKV',
           'ExportConv2d', 'ExportConvTranspose2d', 'ExportSDPA']

ExportOf = Callable[[FakeQuantizer], nn.Module]


class ExportQuantizer(nn.Module):
    """An enabled uniform :class:`FakeQuantizer` as QuantizeLinear /
    DequantizeLinear (:func:`~gplq_mm.quant.qdq.quantize_dequantize`) with
    its step."""

    def __init__(self, q: FakeQuantizer):
        super().__init__()
        if q.grid != 'uniform':
            raise ValueError(f'a quantizer on the {q.grid!r} grid has no '
                             f'ONNX export rule ({q.extra_repr()})')
        q.check_ready()
        self.register_buffer('step', qdq.export_step(q.step))
        self.qmin, self.qmax, self.axis, self.signed = (q.qmin, q.qmax,
                                                        q.axis, q.signed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return qdq.quantize_dequantize(x, self.step, self.qmin, self.qmax,
                                       self.axis, self.signed)


def _input_step(q: FakeQuantizer) -> Optional[torch.Tensor]:
    return qdq.export_step(q.step) if q.enabled else None


class ExportLinear(nn.Module):
    """A weight-quantized :class:`QuantLinear` as :func:`qdq.matmul`: the
    float Parameters, its input quantizer's export form, the weight codes
    computed from its step (constant-folded by the exporter)."""

    def __init__(self, layer: QuantLinear, export_of: ExportOf):
        super().__init__()
        self.weight, self.bias = layer.weight, layer.bias
        self.input_quantizer = export_of(layer.input_quantizer)
        wq = layer.weight_quantizer
        self.register_buffer('weight_step', wq.step.detach().clone())
        self.w_range = (wq.qmin, wq.qmax)
        step = _input_step(layer.input_quantizer)
        self.integer = step is not None and step.dim() == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return qdq.matmul(x, self.input_quantizer, self.integer, self.weight,
                          self.weight_step, self.w_range, self.bias)


class ExportQKV(ExportLinear):
    """A :class:`QuantQKV`: :class:`ExportLinear`, then its q / k / v
    quantizers on the output unless the attention applies them
    (``deferred``): one stacked pair when each has one step on one grid
    (:func:`~gplq_mm.quant.qdq.quantize_dequantize_stacked`)."""

    def __init__(self, layer: QuantQKV, export_of: ExportOf):
        super().__init__(layer, export_of)
        self.num_heads = layer.num_heads
        self.q_quantizer, self.k_quantizer, self.v_quantizer = (
            export_of(q) for q in layer.operand_quantizers)
        self.quantize_output = not layer.deferred and any(
            q.enabled for q in layer.operand_quantizers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if not self.quantize_output:
            return out
        qs = (self.q_quantizer, self.k_quantizer, self.v_quantizer)
        grids = {(q.qmin, q.qmax, q.signed) if isinstance(
            q, ExportQuantizer) and q.step.dim() == 0 else None for q in qs}
        if len(grids) == 1 and None not in grids:  # one step each, one grid
            (qmin, qmax, signed), = grids
            return qdq.quantize_dequantize_stacked(
                out.unflatten(-1, (3, self.num_heads, -1)),
                torch.stack([q.step for q in qs]), qmin, qmax, -3,
                signed).flatten(-3)
        return quantize_qkv(out, self.num_heads, qs)


class ExportConv2d(nn.Conv2d):
    """A weight-quantized :class:`QuantConv2d` as :func:`qdq.conv2d` (a
    patch embedding as a matmul over patches, or a conv of the dequantized
    operands): its geometry, its float Parameters."""

    def __init__(self, layer: QuantConv2d, export_of: ExportOf):
        super().__init__(*layer.conv_args(), device='meta')
        self.weight = layer.weight
        bias = layer.integer_bias()  # the export is in eval mode
        self.bias = None if bias is None else nn.Parameter(
            bias.detach(), requires_grad=False)
        self.input_quantizer = export_of(layer.input_quantizer)
        self.input_step = _input_step(layer.input_quantizer)
        wq = layer.weight_quantizer
        self.register_buffer('weight_step', wq.step.detach().clone())
        self.w_range = (wq.qmin, wq.qmax)
        out = layer.output_quantizer
        self.output_quantizer = None if out is None else export_of(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = qdq.conv2d(self, x, self.input_quantizer, self.input_step,
                       self.weight_step, self.w_range)
        return y if self.output_quantizer is None else self.output_quantizer(y)


class ExportConvTranspose2d(nn.Module):
    """A weight-quantized :class:`QuantConvTranspose2d` as
    :func:`qdq.conv_transpose2d`."""

    def __init__(self, layer: QuantConvTranspose2d, export_of: ExportOf):
        super().__init__()
        self.deconv = layer  # its geometry and float Parameters
        self.input_quantizer = export_of(layer.input_quantizer)
        self.input_step = _input_step(layer.input_quantizer)
        wq = layer.weight_quantizer
        self.register_buffer('weight_step', wq.step.detach().clone())
        self.w_range = (wq.qmin, wq.qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return qdq.conv_transpose2d(self.deconv, x, self.input_quantizer,
                                    self.input_step, self.weight_step,
                                    self.w_range)


class ExportSDPA(nn.Module):
    """A :class:`QuantSDPA` as its composed attention
    (:func:`~gplq_mm.quant.attention.composed_attention`) with the export
    forms of its quantizers; the host's function while all are off."""

    def __init__(self, sdpa: QuantSDPA, export_of: ExportOf):
        super().__init__()
        self.float_fn = sdpa.float_fn
        self.divides, self.fixed_scale = sdpa.divides, sdpa.fixed_scale
        self.p_quantizer = export_of(sdpa.p_quantizer)
        # not registered: the q / k / v quantizers stay under the qkv layer
        self.operands = tuple(export_of(q) for q in sdpa.operands)
        self.quantized = any(q.enabled for q in sdpa.operands + (
            sdpa.p_quantizer, ))

    def forward(self, q, k, v, attn_mask=None, dropout_p=0., scale=None,
                is_causal=False):
        if not self.quantized:
            kwargs = dict(attn_mask=attn_mask, dropout_p=dropout_p,
                          is_causal=is_causal)
            if scale is not None:
                kwargs['scale'] = scale
            return self.float_fn(q, k, v, **kwargs)
        mult = sdpa_multiplier(q, scale, self.fixed_scale, self.divides)
        return composed_attention(q, k, v, self.operands, self.p_quantizer,
                                  mult, attn_mask, dropout_p, is_causal)


def _export_form(mod: nn.Module, export_of: ExportOf) -> Optional[nn.Module]:
    """The export module of ``mod``, or None (keep it, and look inside)."""
    weights = getattr(getattr(mod, 'weight_quantizer', None), 'enabled',
                      False)
    if isinstance(mod, QuantQKV) and weights:
        return ExportQKV(mod, export_of)
    if isinstance(mod, QuantLinear) and weights:
        return ExportLinear(mod, export_of)
    if isinstance(mod, QuantConv2d) and weights:
        return ExportConv2d(mod, export_of)
    if isinstance(mod, QuantConvTranspose2d) and weights:
        return ExportConvTranspose2d(mod, export_of)
    if isinstance(mod, QuantSDPA):
        return ExportSDPA(mod, export_of)
    if isinstance(mod, FakeQuantizer) and mod.enabled:
        return export_of(mod)
    return None


@contextlib.contextmanager
def prepare_export(model: nn.Module):
    """Within the block, ``model``'s quantized sites are their export
    modules (see the module's docstring); on exit the training modules are
    back, the same objects. Yields the number of modules swapped.

    Raises:
        ValueError: an enabled quantizer with no export rule (a log grid).
    """
    memo: Dict[int, nn.Module] = {}

    def export_of(q: FakeQuantizer) -> nn.Module:
        # one export module per quantizer (an attention and its qkv layer
        # share the q / k / v quantizers)
        if id(q) not in memo:
            memo[id(q)] = ExportQuantizer(q) if q.enabled else nn.Identity()
        return memo[id(q)]

    swaps: List[Tuple[nn.Module, str, nn.Module]] = []

    def swap(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            new = _export_form(child, export_of)
            if new is None:
                swap(child)
            else:
                swaps.append((parent, name, child))
                setattr(parent, name, new)

    try:
        swap(model)
        yield len(swaps)
    finally:
        for parent, name, old in reversed(swaps):
            setattr(parent, name, old)
