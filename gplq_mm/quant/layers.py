"""Quantized Linear / Conv2d that subclass the float layers and reuse their
Parameters, so the float state_dict keys stay valid."""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import functional as QF
from .quantizer import FakeQuantizer

__all__ = ['QuantLinear', 'QuantConv2d', 'QuantQKV']


def _act_quantizer(cfg: dict, channels: int, axis: int) -> FakeQuantizer:
    cfg = dict(cfg)
    if cfg.get('granularity') == 'channel':
        cfg.update(num_channels=channels, axis=axis)
    return FakeQuantizer(role='act', **cfg)


def _weight_quantizer(cfg: dict, out_channels: int) -> FakeQuantizer:
    return FakeQuantizer(
        role='weight',
        granularity='channel',
        num_channels=out_channels,
        axis=0,
        **cfg)


def _adopt(new: nn.Module, old: nn.Module) -> nn.Module:
    """Make ``new`` share ``old``'s Parameters, buffers, hooks and flags."""
    for k, v in old.__dict__.items():
        if k not in ('_modules', '_parameters', '_buffers'):
            new.__dict__[k] = v
    new._parameters = old._parameters
    new._buffers = old._buffers
    new._modules = dict(old._modules)
    return new


class QuantLinear(nn.Linear):
    """``nn.Linear`` with an input quantizer (per input feature by default)
    and a per-output-channel weight quantizer."""

    @classmethod
    def from_float(cls, mod: nn.Linear, act_cfg: dict,
                   weight_cfg: dict) -> 'QuantLinear':
        new = _adopt(cls.__new__(cls), mod)
        new._float_cls = type(mod)
        new.input_quantizer = _act_quantizer(act_cfg, mod.in_features, -1)
        new.weight_quantizer = _weight_quantizer(weight_cfg, mod.out_features)
        new.to(mod.weight.device)
        return new

    def to_float(self) -> nn.Linear:
        mod = _adopt(self._float_cls.__new__(self._float_cls), self)
        for name, child in list(mod._modules.items()):
            if isinstance(child, FakeQuantizer):
                del mod._modules[name]
        mod.__dict__.pop('_float_cls', None)
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        iq = self.input_quantizer
        if (iq.fusable and iq.axis in (-1, x.dim() - 1)
                and not self.weight_quantizer.enabled):
            # Stage 1 (W32A4): the fused path saves one tensor less.
            return QF.lsq_linear(x, iq.step, self.weight, self.bias, iq.qmin,
                                 iq.qmax)
        return F.linear(iq(x), self.weight_quantizer(self.weight), self.bias)


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` with an input quantizer (per input channel, axis 1, by
    default) and a per-output-channel weight quantizer."""

    @classmethod
    def from_float(cls, mod: nn.Conv2d, act_cfg: dict,
                   weight_cfg: dict) -> 'QuantConv2d':
        new = _adopt(cls.__new__(cls), mod)
        new._float_cls = type(mod)
        new.input_quantizer = _act_quantizer(act_cfg, mod.in_channels, 1)
        new.weight_quantizer = _weight_quantizer(weight_cfg, mod.out_channels)
        new.to(mod.weight.device)
        return new

    to_float = QuantLinear.to_float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(
            self.input_quantizer(x), self.weight_quantizer(self.weight),
            self.bias)


class QuantQKV(QuantLinear):
    """The fused qkv projection of an attention layer, with named per-head
    quantizers on its three outputs: ``q_quantizer``, ``k_quantizer`` and
    ``v_quantizer``. These are the matmul operands q, k and v: the hosts
    only reshape the qkv output (and scale q by a constant) before the
    matmuls.

    Output layout ``(..., 3 * heads * head_dim)``, ``[q | k | v]``, as every
    supported host uses. ``defer_operands``: the three quantizers are applied
    by the attention that consumes the output (see
    :class:`~gplq_mm.quant.attention.QuantSDPA`), not here.
    """
    defer_operands = False

    @classmethod
    def from_linear(cls, mod: nn.Linear, num_heads: int, act_cfg: dict,
                    weight_cfg: dict, attn_cfg: dict) -> 'QuantQKV':
        if isinstance(mod, QuantLinear):
            new = cls.__new__(cls)
            _adopt(new, mod)
        else:
            new = cls.from_float(mod, act_cfg, weight_cfg)
        if mod.out_features % (3 * num_heads):
            raise ValueError(
                f'qkv out_features={mod.out_features} is not a multiple of '
                f'3 * num_heads={3 * num_heads}')
        new.num_heads = num_heads
        for name in ('q', 'k', 'v'):
            setattr(new, f'{name}_quantizer',
                    _act_quantizer(attn_cfg, num_heads, -2))
        new.to(mod.weight.device)
        return new

    def to_float(self) -> nn.Linear:
        mod = super().to_float()
        mod.__dict__.pop('num_heads', None)
        mod.__dict__.pop('defer_operands', None)
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        qs = (self.q_quantizer, self.k_quantizer, self.v_quantizer)
        if self.defer_operands or not any(q.enabled or q.observing for q in qs):
            return out
        if all(q.fusable and q.bits == qs[0].bits
               and q.step.numel() == qs[0].step.numel() for q in qs):
            # One LSQ call over (..., 3 * groups, rest) with the three
            # quantizers' steps side by side: the same values and gradients
            # as three calls and a stack, without the copy.
            step = torch.cat([q.step for q in qs])
            out = out.unflatten(-1, (step.numel(), -1))
            return QF.lsq_fake_quant(out, step, qs[0].qmin, qs[0].qmax,
                                     axis=-2).flatten(-2)
        # (..., 3, heads, head_dim): one step per head for each of q, k, v.
        parts = out.unflatten(-1, (3, self.num_heads, -1)).unbind(-3)
        out = torch.stack([q(p) for q, p in zip(qs, parts)], dim=-3)
        return out.flatten(-3)


def is_quant_layer(mod: nn.Module) -> bool:
    return isinstance(mod, (QuantLinear, QuantConv2d))


def iter_quantizers(mod: nn.Module, role: Optional[str] = None):
    for name, m in mod.named_modules():
        if isinstance(m, FakeQuantizer) and (role is None or m.role == role):
            yield name, m
