"""Quantized Linear / Conv2d / ConvTranspose2d that subclass the float
layers and reuse their Parameter objects, so the float state_dict keys stay
valid and the optimizer of the float model trains the quantized one.

Like torchao's ``FakeQuantizedLinear.from_linear`` / ``to_linear``: each
wrapper runs its own ``__init__`` (on the meta device, so nothing is
allocated twice), then takes the float layer's ``weight`` and ``bias``.
Forward hooks or extra attributes set on the float layer are not carried
over.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fused import lsq_fake_quant, lsq_linear
from .qdq import is_patchify, one_step
from .quantizer import FakeQuantizer

__all__ = ['QuantLinear', 'QuantConv2d', 'QuantConvTranspose2d', 'QuantQKV',
           'act_quantizer', 'is_quant_layer', 'iter_quantizers',
           'quantize_qkv']


def act_quantizer(cfg: dict, channels: int, axis: int,
                  device=None) -> FakeQuantizer:
    """An activation quantizer from a ``QuantConfig.quantizer_cfgs()``
    entry; per-channel ones get ``channels`` steps along ``axis``."""
    cfg = dict(cfg)
    if cfg.get('granularity') == 'channel':
        cfg.update(num_channels=channels, axis=axis)
    return FakeQuantizer(role='act', device=device, **cfg)


def _weight_quantizer(cfg: dict, out_channels: int, device=None,
                      axis: int = 0) -> FakeQuantizer:
    return FakeQuantizer(role='weight', granularity='channel',
                         num_channels=out_channels, axis=axis, device=device,
                         **cfg)


def _take_parameters(new: nn.Module, old: nn.Module) -> nn.Module:
    """``new`` (built on the meta device) takes ``old``'s weight and bias
    Parameter objects and its train / eval mode."""
    new.weight = old.weight
    new.bias = old.bias
    new.train(old.training)
    return new


class QuantLinear(nn.Linear):
    """``nn.Linear`` with an input quantizer (per input feature by default)
    and a per-output-channel weight quantizer.

    Args:
        in_features, out_features, bias: As ``nn.Linear``.
        act_cfg (dict): Input quantizer config.
        weight_cfg (dict): Weight quantizer config.
        float_cls (type): The float class :meth:`to_float` returns.
            Defaults to ``nn.Linear``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool,
                 act_cfg: dict, weight_cfg: dict,
                 float_cls: type = nn.Linear, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device,
                         dtype=dtype)
        qdev = None if device == 'meta' else device
        self.float_cls = float_cls
        self.input_quantizer = act_quantizer(act_cfg, in_features, -1, qdev)
        self.weight_quantizer = _weight_quantizer(weight_cfg, out_features,
                                                  qdev)

    @classmethod
    def from_float(cls, mod: nn.Linear, act_cfg: dict, weight_cfg: dict,
                   **kwargs) -> 'QuantLinear':
        new = cls(mod.in_features, mod.out_features, mod.bias is not None,
                  act_cfg, weight_cfg, float_cls=type(mod), device='meta',
                  **kwargs)
        return _take_parameters(new, mod).to(mod.weight.device)

    def to_float(self) -> nn.Linear:
        mod = self.float_cls(self.in_features, self.out_features,
                             self.bias is not None, device='meta')
        return _take_parameters(mod, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        iq = self.input_quantizer
        if iq.fuses(-1) and not self.weight_quantizer.enabled:
            # Stage 1 (W32A4): the fused path saves one tensor less.
            return lsq_linear(x, iq.step, self.weight, self.bias, iq.qmin,
                              iq.qmax)
        return F.linear(iq(x), self.weight_quantizer(self.weight), self.bias)


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` with an input quantizer (per input channel, axis 1, by
    default) and a per-output-channel weight quantizer. Arguments as
    :class:`QuantLinear` after those of ``nn.Conv2d``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size,
                 stride, padding, dilation, groups: int, bias: bool,
                 padding_mode: str, act_cfg: dict, weight_cfg: dict,
                 float_cls: type = nn.Conv2d, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         padding, dilation, groups, bias, padding_mode,
                         device=device, dtype=dtype)
        qdev = None if device == 'meta' else device
        self.float_cls = float_cls
        self.input_quantizer = act_quantizer(act_cfg, in_channels, 1, qdev)
        self.weight_quantizer = _weight_quantizer(weight_cfg, out_channels,
                                                  qdev)
        # deployable mode, where HostSpec.requantized_outputs names this
        # conv (see convert)
        self.output_quantizer: Optional[FakeQuantizer] = None

    def conv_args(self) -> tuple:
        """The ``nn.Conv2d`` constructor arguments of this layer."""
        return (self.in_channels, self.out_channels, self.kernel_size,
                self.stride, self.padding, self.dilation, self.groups,
                self.bias is not None, self.padding_mode)

    @classmethod
    def from_float(cls, mod: nn.Conv2d, act_cfg: dict,
                   weight_cfg: dict) -> 'QuantConv2d':
        new = cls(*QuantConv2d.conv_args(mod), act_cfg, weight_cfg,
                  float_cls=type(mod), device='meta')
        return _take_parameters(new, mod).to(mod.weight.device)

    def to_float(self) -> nn.Conv2d:
        return _take_parameters(
            self.float_cls(*self.conv_args(), device='meta'), self)

    def integer_bias(self) -> Optional[torch.Tensor]:
        """The bias as an integer convolution adds it: in eval mode, with
        quantized weights and one input step (deployable mode), rounded to
        the grid of the int32 accumulator, ``s_x * s_w`` per output channel,
        as onnxruntime's QLinearConv takes it (a patch embedding, which
        exports as a matmul with a float bias, keeps its bias)."""
        iq, wq, b = self.input_quantizer, self.weight_quantizer, self.bias
        if (b is None or self.training or not wq.enabled or not iq.enabled
                or is_patchify(self) or not one_step(iq.step)):
            return b
        acc = iq.step.reshape(-1)[0] * wq.step.reshape(-1)
        return torch.round(b / acc) * acc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._conv_forward(
            self.input_quantizer(x), self.weight_quantizer(self.weight),
            self.integer_bias())
        return y if self.output_quantizer is None else self.output_quantizer(y)


class QuantConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (one group) with an input quantizer (per input
    channel, axis 1, by default) and a weight quantizer per output channel:
    axis 1 of its ``(in, out, kh, kw)`` weight. Arguments as
    :class:`QuantLinear` after those of ``nn.ConvTranspose2d``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size,
                 stride, padding, output_padding, groups: int, bias: bool,
                 dilation, padding_mode: str, act_cfg: dict,
                 weight_cfg: dict, float_cls: type = nn.ConvTranspose2d,
                 device=None, dtype=None):
        if groups != 1:
            raise ValueError('QuantConvTranspose2d: groups must be 1')
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         padding, output_padding, groups, bias, dilation,
                         padding_mode, device=device, dtype=dtype)
        qdev = None if device == 'meta' else device
        self.float_cls = float_cls
        self.input_quantizer = act_quantizer(act_cfg, in_channels, 1, qdev)
        self.weight_quantizer = _weight_quantizer(weight_cfg, out_channels,
                                                  qdev, axis=1)

    def conv_args(self) -> tuple:
        """The ``nn.ConvTranspose2d`` constructor arguments of this layer."""
        return (self.in_channels, self.out_channels, self.kernel_size,
                self.stride, self.padding, self.output_padding, self.groups,
                self.bias is not None, self.dilation, self.padding_mode)

    @classmethod
    def from_float(cls, mod: nn.ConvTranspose2d, act_cfg: dict,
                   weight_cfg: dict) -> 'QuantConvTranspose2d':
        new = cls(*QuantConvTranspose2d.conv_args(mod), act_cfg, weight_cfg,
                  float_cls=type(mod), device='meta')
        return _take_parameters(new, mod).to(mod.weight.device)

    def to_float(self) -> nn.ConvTranspose2d:
        return _take_parameters(
            self.float_cls(*self.conv_args(), device='meta'), self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(
            self.input_quantizer(x), self.weight_quantizer(self.weight),
            self.bias, self.stride, self.padding, self.output_padding,
            self.groups, self.dilation)


class QuantQKV(QuantLinear):
    """The fused qkv projection of an attention layer, with named per-head
    quantizers for the matmul operands q, k and v (``q_quantizer``,
    ``k_quantizer``, ``v_quantizer``): every supported host only reshapes
    the qkv output (and scales q by a constant) before the matmuls.

    Output layout ``(..., 3 * heads * head_dim)``, ``[q | k | v]``, as every
    supported host uses.

    Args:
        num_heads (int): Heads of the attention.
        attn_cfg (dict): q / k / v quantizer config.
        deferred (bool): The attention that consumes the output applies the
            q / k / v quantizers (see
            :class:`~gplq_mm.quant.attention.QuantSDPA`), not this layer.
            Set by the attention adapter at convert. Defaults to False.
        tokens (int, optional): One step per token (axis -3 of the
            ``(..., N, heads, head_dim)`` view) for this many tokens,
            instead of one per head (axis -2). Defaults to None.
        **kwargs: See :class:`QuantLinear`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool,
                 act_cfg: dict, weight_cfg: dict, num_heads: int,
                 attn_cfg: dict, deferred: bool = False,
                 tokens: Optional[int] = None, **kwargs):
        if out_features % (3 * num_heads):
            raise ValueError(
                f'qkv out_features={out_features} is not a multiple of '
                f'3 * num_heads={3 * num_heads}')
        super().__init__(in_features, out_features, bias, act_cfg, weight_cfg,
                         **kwargs)
        device = kwargs.get('device')
        qdev = None if device == 'meta' else device
        self.num_heads, self.deferred = num_heads, deferred
        self.q_quantizer, self.k_quantizer, self.v_quantizer = (
            act_quantizer(attn_cfg, tokens or num_heads, -3 if tokens else -2,
                          qdev) for _ in range(3))

    @property
    def operand_quantizers(self) -> tuple:
        return (self.q_quantizer, self.k_quantizer, self.v_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        qs = self.operand_quantizers
        if self.deferred or not any(q.active for q in qs):
            return out
        if not all(q.fuses(-2) for q in qs):
            return quantize_qkv(out, self.num_heads, qs)
        # One LSQ call over (..., 3 * groups, rest) with the three steps side
        # by side: the values and gradients of three calls, without a copy.
        step = torch.cat([q.step for q in qs])
        out = out.unflatten(-1, (step.numel(), -1))
        return lsq_fake_quant(out, step, qs[0].qmin, qs[0].qmax,
                              axis=-2).flatten(-2)


def quantize_qkv(out: torch.Tensor, num_heads: int,
                 quantizers) -> torch.Tensor:
    """A qkv projection's output ``(..., 3 * heads * head_dim)`` with each
    of the q, k, v ``quantizers`` (modules) called on its third, viewed as
    ``(..., heads, head_dim)``: how they observe during calibration, run
    per token, and export."""
    parts = out.unflatten(-1, (3, num_heads, -1)).unbind(-3)
    return torch.stack([q(p) for q, p in zip(quantizers, parts)],
                       dim=-3).flatten(-3)


def is_quant_layer(mod: nn.Module) -> bool:
    return isinstance(mod, (QuantLinear, QuantConv2d, QuantConvTranspose2d))


def iter_quantizers(mod: nn.Module, role: Optional[str] = None):
    """``(name, quantizer)`` of every :class:`FakeQuantizer` in ``mod``
    (of ``role`` only, when given)."""
    for name, m in mod.named_modules():
        if isinstance(m, FakeQuantizer) and (role is None or m.role == role):
            yield name, m
