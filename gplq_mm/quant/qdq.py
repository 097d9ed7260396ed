"""The quantizers' ONNX form: QuantizeLinear / DequantizeLinear.

While ``torch.onnx.export`` traces a model (``torch.onnx.is_in_onnx_export()``),
:class:`~gplq_mm.quant.quantizer.FakeQuantizer` and the quantized layers call
these functions instead of the LSQ ones. In PyTorch they compute exactly
:func:`~gplq_mm.quant.functional.fake_quant`; their ``symbolic`` writes the
same arithmetic as ONNX operators:

* an activation with one step (all steps equal): ``Clip`` to the grid's
  range, ``QuantizeLinear`` to uint8 codes (zero point 128 for a signed
  grid, 0 for an unsigned one), ``DequantizeLinear``: the form integer
  kernels take. Codes of ``b <= 8`` bits fit 8 bits; the clip keeps them
  on the ``b``-bit grid. With one step per channel along ``axis``: ``Min``
  / ``Max``, per-axis ``QuantizeLinear`` to int8 / uint8 codes (zero point
  0), ``Cast`` and ``Mul`` (float kernels, the same values).
* a weight: its integer codes (computed here, constant-folded into an int8
  initializer by :func:`gplq_mm.deploy.export_onnx`), dequantized with one
  scale per output channel; how, and which kernel onnxruntime picks, is
  said at :func:`linear` and :func:`conv2d`.
"""
import torch

from .functional import broadcast_shape, fake_quant

__all__ = ['quantize_dequantize', 'weight_codes', 'dequantize', 'linear',
           'conv2d', 'exporting', 'one_step']


def exporting() -> bool:
    """Whether ``torch.onnx.export`` is tracing now."""
    return torch.onnx.is_in_onnx_export()


class _QDQ(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, step, step_b, qmin, qmax, axis, signed):
        return fake_quant(x, step_b, qmin, qmax)

    @staticmethod
    def symbolic(g, x, step, step_b, qmin, qmax, axis, signed):
        per_tensor = step_b is step
        lo = g.op('Mul', step_b, g.op('Constant',
                                      value_t=torch.tensor(float(qmin))))
        hi = g.op('Mul', step_b, g.op('Constant',
                                      value_t=torch.tensor(float(qmax))))
        if per_tensor:
            # uint8 codes, signed ones offset by a zero point of 128: the
            # form onnxruntime's x86 integer kernels take (its int8
            # activation paths fail to load in 1.32 after transposes).
            zero = g.op('Constant', value_t=torch.tensor(
                128 if signed else 0, dtype=torch.uint8))
            q = g.op('QuantizeLinear', g.op('Clip', x, lo, hi), step, zero)
            return g.op('DequantizeLinear', q, step, zero)
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


def _squeeze_step(step: torch.Tensor):
    """``step[0]`` (a scalar) when every entry is equal, else ``step``."""
    return step.reshape(-1)[0] if one_step(step) else step


def quantize_dequantize(x: torch.Tensor, step: torch.Tensor, qmin: int,
                        qmax: int, axis: int, signed: bool) -> torch.Tensor:
    """``fake_quant`` of ``x`` (steps along ``axis``), exported as
    QuantizeLinear / DequantizeLinear."""
    step = _squeeze_step(step.to(x.dtype))
    axis = axis % x.dim()
    step_b = step if step.dim() == 0 else step.view(
        broadcast_shape(x.dim(), axis, step.numel()))
    return _QDQ.apply(x, step, step_b, qmin, qmax, axis, signed)


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
    """int8 codes ``clamp(round(w / s), qmin, qmax)``, steps along ``axis``."""
    step_b = step.to(w.dtype).view(broadcast_shape(w.dim(), axis,
                                                   step.numel()))
    return torch.clamp(torch.round(w / step_b), qmin, qmax).to(torch.int8)


def dequantize(codes: torch.Tensor, step: torch.Tensor, axis: int,
               op: bool = True) -> torch.Tensor:
    """``codes * step`` (steps along ``axis``), exported as
    DequantizeLinear (``op``) or as Cast and Mul."""
    step_b = step.view(broadcast_shape(codes.dim(), axis, step.numel()))
    return _Dequantize.apply(codes, step, step_b, axis, op)


def linear(layer, x: torch.Tensor) -> torch.Tensor:
    """A quantized Linear's forward in the form onnxruntime runs as an
    integer kernel when its input has one step: ``MatMul(DequantizeLinear(
    QuantizeLinear(x)), DequantizeLinear(codes^T))``, the weight scales on
    the output axis, and the bias added after with a full-rank shape
    (onnxruntime 1.32 fuses MatMul + a 1-D bias Add into a float Gemm before
    its QDQ fusion, or fails on int8 codes). With per-channel (or no) input
    steps the weight is dequantized by Cast and Mul: onnxruntime would
    otherwise fuse it into MatMulNBits, which quantizes the float input to
    int8 on its own (other values)."""
    return _matmul(x, layer.input_quantizer, layer.weight_quantizer,
                   layer.weight, layer.bias)


def _matmul(x, iq, wq, weight, bias):
    """``x @ fq(weight)^T + bias`` for a ``(out, in)`` weight (see
    :func:`linear`)."""
    one = iq.enabled and one_step(iq.step)  # else MatMulNBits, see above
    codes = weight_codes(weight.t(), wq.step, wq.qmin, wq.qmax, axis=1)
    y = torch.matmul(iq(x), dequantize(codes, wq.step.to(x.dtype), axis=1,
                                       op=one))
    if bias is not None:
        y = y + bias.to(y.dtype).view((1, ) * (y.dim() - 1) + (-1, ))
    return y


class _ConvInteger(torch.autograd.Function):
    """A per-tensor-quantized input convolved with int8 weight codes:
    ``conv(q(x), codes) * (s_x * s_w) + bias``."""

    @staticmethod
    def forward(ctx, x, step, codes, scale_b, bias_b, qmin, qmax, signed,
                conv_args):
        xq = torch.clamp(torch.round(x / step), qmin, qmax)
        y = torch.nn.functional.conv2d(xq, codes.to(x.dtype), None,
                                       *conv_args)
        return y * scale_b + bias_b

    @staticmethod
    def symbolic(g, x, step, codes, scale_b, bias_b, qmin, qmax, signed,
                 conv_args):
        stride, padding, dilation, groups = conv_args
        lo, hi = (g.op('Mul', step, g.op('Constant', value_t=torch.tensor(
            float(v)))) for v in (qmin, qmax))
        zero = g.op('Constant', value_t=torch.zeros(
            (), dtype=torch.int8 if signed else torch.uint8))
        q = g.op('QuantizeLinear', g.op('Clip', x, lo, hi), step, zero)
        y = g.op('ConvInteger', q, codes, strides_i=list(stride),
                 pads_i=list(padding) * 2, dilations_i=list(dilation),
                 group_i=groups)
        return g.op('Add', g.op('Mul', g.op('Cast', y, to_i=1), scale_b),
                    bias_b)


def _is_patchify(conv, x: torch.Tensor) -> bool:
    """Non-overlapping patches tiling ``x`` (a patch embedding)."""
    k = tuple(conv.kernel_size)
    return (k == tuple(conv.stride) and conv.groups == 1
            and tuple(conv.dilation) == (1, 1)
            and not isinstance(conv.padding, str)
            and tuple(conv.padding) == (0, 0)
            and x.shape[-2] % k[0] == 0 and x.shape[-1] % k[1] == 0)


def _patchify(conv, x: torch.Tensor) -> torch.Tensor:
    """A patch embedding as a quantized matmul over the flattened patches
    (onnxruntime runs MatMulIntegerToFloat faster than ConvInteger)."""
    (kh, kw), (h, w) = conv.kernel_size, x.shape[-2:]
    b, c = x.shape[:2]
    patches = x.reshape(b, c, h // kh, kh, w // kw, kw).permute(
        0, 2, 4, 1, 3, 5).reshape(b, (h // kh) * (w // kw), c * kh * kw)
    y = _matmul(patches, conv.input_quantizer, conv.weight_quantizer,
                conv.weight.reshape(conv.out_channels, -1), conv.bias)
    return y.reshape(b, h // kh, w // kw, -1).permute(0, 3, 1, 2)


def conv2d(conv, x: torch.Tensor) -> torch.Tensor:
    """``conv``'s quantized forward. With one input step: a patch embedding
    as :func:`linear` on the flattened patches; another zero-padded conv as
    ``QuantizeLinear`` and ``ConvInteger`` on the int8 weight codes, then
    the scales (onnxruntime runs a DequantizeLinear -> Conv with no
    quantized output in float). Else the float ``Conv`` of the dequantized
    input and codes (Cast and Mul, as :func:`linear`)."""
    iq, wq = conv.input_quantizer, conv.weight_quantizer
    if iq.enabled and one_step(iq.step) and _is_patchify(conv, x):
        return _patchify(conv, x)
    codes = weight_codes(conv.weight, wq.step, wq.qmin, wq.qmax, axis=0)
    step = _squeeze_step(iq.step.to(x.dtype))
    w_step = wq.step.to(x.dtype)
    if (step.dim() == 0 and iq.enabled and conv.padding_mode == 'zeros'
            and not isinstance(conv.padding, str)):
        out_shape = (1, -1, 1, 1)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(
            w_step)
        return _ConvInteger.apply(
            x, step, codes, (step * w_step).view(out_shape),
            bias.to(x.dtype).view(out_shape), iq.qmin, iq.qmax, iq.signed,
            (conv.stride, conv.padding, conv.dilation, conv.groups))
    return conv._conv_forward(iq(x), dequantize(codes, w_step, axis=0,
                                                op=False), conv.bias)
