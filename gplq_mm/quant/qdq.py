"""The quantizers' ONNX form: QuantizeLinear / DequantizeLinear.

The export modules (:mod:`gplq_mm.quant.export`, swapped in by
:func:`~gplq_mm.quant.prepare_export` for the trace) call these functions.
In PyTorch they compute exactly
:func:`~gplq_mm.quant.functional.fake_quant`; their ``symbolic`` writes the
same arithmetic as ONNX operators:

* an activation with one step (all steps equal): ``QuantizeLinear`` to
  uint8 codes (zero point 128 for a signed grid, 0 for an unsigned one),
  ``Clip`` of the codes to the ``b``-bit grid, ``DequantizeLinear``: the
  form integer kernels take; several such quantizers of the slices of one
  tensor (q, k, v) as one pair with a step per slice
  (:func:`quantize_dequantize_stacked`). With one step per channel along
  ``axis``: ``Min`` / ``Max``, per-axis ``QuantizeLinear`` to int8 / uint8
  codes (zero point 0), ``Cast`` and ``Mul`` (float kernels, the same
  values).
* a weight: its integer codes (computed here, constant-folded into an int8
  initializer by :func:`gplq_mm.deploy.export_onnx`), dequantized with one
  scale per output channel; how, and which kernel onnxruntime picks, is
  said at :func:`matmul` and :func:`conv2d`.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn

from .functional import broadcast_shape, codes, fake_quant, patchify

__all__ = ['quantize_dequantize', 'quantize_dequantize_stacked',
           'weight_codes', 'dequantize', 'matmul',
           'conv2d', 'conv_transpose2d', 'one_step', 'export_step',
           'is_patchify']


class _QDQ(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, step, step_b, qmin, qmax, axis, signed,
                stacked=False):
        return fake_quant(x, step_b, qmin, qmax)

    @staticmethod
    def symbolic(g, x, step, step_b, qmin, qmax, axis, signed,
                 stacked=False):
        per_tensor = step_b is step
        if stacked:  # one-step quantizers of the slices along ``axis``
            z = 128 if signed else 0
            zero = g.op('Constant', value_t=torch.full(
                step.type().sizes(), z, dtype=torch.uint8))
            lo, hi = (g.op('Constant', value_t=torch.tensor(
                v + z, dtype=torch.uint8)) for v in (qmin, qmax))
            q = g.op('Clip', g.op('QuantizeLinear', x, step, zero,
                                  axis_i=axis), lo, hi)
            return g.op('DequantizeLinear', q, step, zero, axis_i=axis)
        if per_tensor:
            # uint8 codes, signed ones offset by a zero point of 128: the
            # form onnxruntime's x86 integer kernels take (its int8
            # activation paths fail to load in 1.32 after transposes). The
            # b-bit range is clipped on the codes, after QuantizeLinear (the
            # same codes): a float Clip before it would stand between a
            # Conv and its QuantizeLinear, which onnxruntime then cannot
            # fuse into QLinearConv.
            z = 128 if signed else 0
            zero = g.op('Constant', value_t=torch.tensor(z,
                                                         dtype=torch.uint8))
            lo, hi = (g.op('Constant', value_t=torch.tensor(
                v + z, dtype=torch.uint8)) for v in (qmin, qmax))
            q = g.op('Clip', g.op('QuantizeLinear', x, step, zero), lo, hi)
            return g.op('DequantizeLinear', q, step, zero)
        lo = g.op('Mul', step_b, g.op('Constant',
                                      value_t=torch.tensor(float(qmin))))
        hi = g.op('Mul', step_b, g.op('Constant',
                                      value_t=torch.tensor(float(qmax))))
        dtype = torch.int8 if signed else torch.uint8
        # Per channel (Clip takes scalars only). Dequantized as Cast * step:
        # onnxruntime 1.32 fuses a per-axis DequantizeLinear feeding a
        # MatMul's first input into MatMulIntegerToFloat, which then fails
        # ("Per-Channel is not supported yet"); the same values in float ops
        # are left alone.
        zero = g.op('Constant', value_t=torch.zeros(step.type().sizes(),
                                                    dtype=dtype))
        q = g.op('QuantizeLinear', g.op('Max', g.op('Min', x, hi), lo), step,
                 zero, axis_i=axis)
        return g.op('Mul', g.op('Cast', q, to_i=1), step_b)  # 1: FLOAT


def one_step(step: torch.Tensor) -> bool:
    """Whether every entry of ``step`` is equal (one scale per tensor)."""
    return step.numel() == 1 or bool((step == step.reshape(-1)[0]).all())


def export_step(step: torch.Tensor) -> torch.Tensor:
    """A quantizer's step as the export takes it: a scalar when every entry
    is equal (per tensor), else the 1-D steps. Decided before the trace:
    nothing traced is asked its size or values."""
    step = step.detach()
    return step.reshape(-1)[0].clone() if one_step(step) else step.clone()


def quantize_dequantize(x: torch.Tensor, step: torch.Tensor, qmin: int,
                        qmax: int, axis: int, signed: bool) -> torch.Tensor:
    """``fake_quant`` of ``x`` with an :func:`export_step` (a scalar, or one
    step per index of ``axis``), exported as QuantizeLinear /
    DequantizeLinear."""
    step = step.to(x.dtype)
    if step.dim() == 0:
        return _QDQ.apply(x, step, step, qmin, qmax, axis, signed)
    axis = axis % x.dim()
    step_b = step.reshape(broadcast_shape(x.dim(), axis, -1))
    return _QDQ.apply(x, step, step_b, qmin, qmax, axis, signed)


def quantize_dequantize_stacked(x: torch.Tensor, steps: torch.Tensor,
                                qmin: int, qmax: int, axis: int,
                                signed: bool) -> torch.Tensor:
    """Each slice ``i`` of ``x`` along ``axis`` through the one-step
    quantizer of step ``steps[i]`` (the same grid ``qmin .. qmax``): q, k
    and v of a qkv output. One QuantizeLinear / DequantizeLinear pair with
    a step per slice, the codes clipped as in the one-step form, where
    splitting ``x`` for three pairs and joining their outputs cost
    onnxruntime a tenth of Swin-T's W4A4 time (two full copies of the qkv
    output per block; profile in docs/deploy.md)."""
    steps = steps.to(x.dtype)
    axis = axis - x.dim() if axis >= 0 else axis  # (negative: see regrid)
    step_b = steps.reshape(broadcast_shape(x.dim(), axis, -1))
    return _QDQ.apply(x, steps, step_b, qmin, qmax, axis, signed, True)


class _Dequantize(torch.autograd.Function):

    @staticmethod
    def forward(ctx, codes, step, step_b, axis, op):
        return codes.to(step.dtype) * step_b

    @staticmethod
    def symbolic(g, codes, step, step_b, axis, op):
        if op:
            return g.op('DequantizeLinear', codes, step, axis_i=axis)
        return g.op('Mul', g.op('Cast', codes, to_i=1), step_b)


def weight_codes(w: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int,
                 axis: int) -> torch.Tensor:
    """int8 :func:`~gplq_mm.quant.functional.codes` of ``w``, steps along
    ``axis``."""
    return codes(w, step, qmin, qmax, axis).to(torch.int8)


def dequantize(codes: torch.Tensor, step: torch.Tensor, axis: int,
               op: bool = True) -> torch.Tensor:
    """``codes * step`` (steps along ``axis``), exported as
    DequantizeLinear (``op``) or as Cast and Mul."""
    step_b = step.reshape(broadcast_shape(codes.dim(), axis, -1))
    return _Dequantize.apply(codes, step, step_b, axis, op)


def matmul(x: torch.Tensor, input_quantizer: nn.Module, integer: bool,
           weight: torch.Tensor, w_step: torch.Tensor,
           w_range: Tuple[int, int],
           bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``x @ fq(weight)^T + bias`` for a ``(out, in)`` weight with one step
    per output channel, in the form onnxruntime runs as an integer kernel
    when the input has one step (``integer``): ``MatMul(DequantizeLinear(
    QuantizeLinear(x)), DequantizeLinear(codes^T))``, the weight scales on
    the output axis, and the bias added after with a full-rank shape
    (onnxruntime 1.32 fuses MatMul + a 1-D bias Add into a float Gemm before
    its QDQ fusion, or fails on int8 codes). With per-channel (or no) input
    steps the weight is dequantized by Cast and Mul: onnxruntime would
    otherwise fuse it into MatMulNBits, which quantizes the float input to
    int8 on its own (other values)."""
    if x.dim() == 2:  # (RoIs, C): onnxruntime fuses a 2-D MatMul + Add
        # into a float Gemm before its QDQ fusion; as (1, RoIs, C) it is not
        return matmul(x[None], input_quantizer, integer, weight, w_step,
                      w_range, bias)[0]
    w_codes = weight_codes(weight.t(), w_step, *w_range, axis=1)
    y = torch.matmul(input_quantizer(x), dequantize(
        w_codes, w_step.to(x.dtype), axis=1, op=integer))
    if bias is not None:
        y = y + bias.to(y.dtype).view((1, ) * (y.dim() - 1) + (-1, ))
    return y


def is_patchify(conv: nn.Conv2d) -> bool:
    """Non-overlapping patches (a patch embedding): kernel = stride, no
    padding, dilation or groups."""
    return (tuple(conv.kernel_size) == tuple(conv.stride)
            and conv.groups == 1 and tuple(conv.dilation) == (1, 1)
            and not isinstance(conv.padding, str)
            and tuple(conv.padding) == (0, 0))


def conv2d(conv: nn.Conv2d, x: torch.Tensor, input_quantizer: nn.Module,
           input_step: Optional[torch.Tensor], w_step: torch.Tensor,
           w_range: Tuple[int, int]) -> torch.Tensor:
    """The quantized forward of ``conv`` (its geometry, weight and bias),
    its input quantized by ``input_quantizer`` with the :func:`export_step`
    ``input_step`` (None: not quantized). With one input step: a patch
    embedding (or a 1 x 1 conv) as :func:`matmul` on the flattened patches
    (:func:`~gplq_mm.quant.functional.patchify`), which onnxruntime runs as
    MatMulIntegerToFloat; another conv as ``Conv`` of the
    ``DequantizeLinear`` input and weight codes, which onnxruntime runs as
    QLinearConv when a QuantizeLinear (through a ReLU) takes its output,
    and in float (the same values) otherwise: its ConvInteger, which would
    take the codes without requantizing the output, is about 10x slower
    than the float Conv. Else the float ``Conv`` of the dequantized input
    and codes (Cast and Mul, as :func:`matmul`)."""
    one = input_step is not None and input_step.dim() == 0
    if one and is_patchify(conv):
        kh, kw = conv.kernel_size
        if (kh, kw) == (1, 1):
            # quantized in the producer's layout (a conv's output), and its
            # sizes read after, so that the producer and this QuantizeLinear
            # fuse (QLinearConv): the layout ops then move the codes
            x, input_quantizer = input_quantizer(x), nn.Identity()
        h, w = x.shape[-2] // kh, x.shape[-1] // kw
        if (kh, kw) != (1, 1):  # the conv drops a remainder, so do we
            x = x[..., :h * kh, :w * kw]
        y = matmul(patchify(x, (kh, kw)), input_quantizer, True,
                   conv.weight.reshape(conv.out_channels, -1), w_step,
                   w_range, conv.bias)  # (B, patches, C_out)
        return y.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
    w_codes = weight_codes(conv.weight, w_step, *w_range, axis=0)
    return conv._conv_forward(input_quantizer(x), dequantize(
        w_codes, w_step.to(x.dtype), axis=0, op=one), conv.bias)


def conv_transpose2d(deconv: nn.ConvTranspose2d, x: torch.Tensor,
                     input_quantizer: nn.Module,
                     input_step: Optional[torch.Tensor], w_step: torch.Tensor,
                     w_range: Tuple[int, int]) -> torch.Tensor:
    """The quantized forward of a transposed conv (one group; its weight
    ``(in, out, kh, kw)`` with one step per output channel). With one input
    step and kernel = stride (no padding: each input pixel paints its own
    ``kh x kw`` output patch, the mask head's 2 x 2 upsampling), a
    :func:`matmul` of the pixels with the ``(in, out * kh * kw)`` weight,
    then the patches laid out: onnxruntime has no integer ConvTranspose.
    Else the float ``ConvTranspose`` of the dequantized operands."""
    (kh, kw), o = deconv.kernel_size, deconv.out_channels
    one = input_step is not None and input_step.dim() == 0
    if one and tuple(deconv.stride) == (kh, kw) and tuple(
            deconv.padding) == (0, 0) and tuple(
                deconv.output_padding) == (0, 0) and tuple(
                    deconv.dilation) == (1, 1):
        weight = deconv.weight.permute(1, 2, 3, 0).reshape(o * kh * kw, -1)
        # quantized in the producer's layout, and nothing else reading the
        # producer's output (the sizes are read after the matmul), so that
        # the producing conv and this QuantizeLinear fuse (QLinearConv);
        # onnxruntime moves the DequantizeLinear past the transpose
        y = matmul(input_quantizer(x).permute(0, 2, 3, 1), nn.Identity(),
                   True, weight, w_step.repeat_interleave(kh * kw), w_range,
                   None)
        n, h, w = y.shape[:3]
        y = y.reshape(n, h, w, o, kh, kw).permute(0, 3, 1, 4, 2, 5).reshape(
            n, o, h * kh, w * kw)
        if deconv.bias is not None:
            y = y + deconv.bias.to(y.dtype).view(1, -1, 1, 1)
        return y
    w_codes = weight_codes(deconv.weight, w_step, *w_range, axis=1)
    return torch.nn.functional.conv_transpose2d(
        input_quantizer(x), dequantize(w_codes, w_step.to(x.dtype), axis=1,
                                       op=False), deconv.bias,
        deconv.stride, deconv.padding, deconv.output_padding, deconv.groups,
        deconv.dilation)
