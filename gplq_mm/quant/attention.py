"""Quantized attention: one adapter per host attention class.

Every adapter works through seams the host already has; none copies a
host ``forward``:

* q, k, v: the host's fused ``qkv`` Linear becomes a
  :class:`~gplq_mm.quant.layers.QuantQKV` whose named ``q/k/v_quantizer``
  act on its output (every host only reshapes it, and scales q by a
  constant, before the matmuls).
* softmax output (``p_quantizer``, unsigned):
    - mmpretrain ``MultiheadAttention`` calls the attribute
      ``scaled_dot_product_attention``: it becomes :class:`QuantSDPA`, which
      calls the host's own function while its quantizer is off and owns the
      attention math explicitly while it is on.
    - mmpretrain / mmdet ``WindowMSA`` and timm ``WindowAttention`` call
      ``self.softmax``: it becomes :class:`QuantSeam` (softmax, then
      quantize).
    - timm ``Attention`` applies ``self.attn_drop`` right after the softmax
      of its explicit path: it becomes :class:`QuantSeam` (quantize, then
      dropout), and the host's ``fused_attn`` flag is switched off while any
      of its quantizers is active (it returns to the host's value
      otherwise, so quantizers off == float exactly).
"""
import functools
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import functional as QF
from .layers import QuantLinear, QuantQKV, _act_quantizer
from .quantizer import FakeQuantizer

__all__ = ['QuantSDPA', 'QuantSeam', 'ATTENTION_ADAPTERS', 'PASS_THROUGH',
           'find_adapter', 'refresh_attention_paths']


OPERAND_QUANTIZERS = ('q_quantizer', 'k_quantizer', 'v_quantizer',
                      'p_quantizer')


def _active(q: FakeQuantizer) -> bool:
    return q.enabled or q.observing


class QuantSDPA(nn.Module):
    """Stands in for a host's ``scaled_dot_product_attention`` function.

    Args:
        float_fn (callable): The host's function: ``F.scaled_dot_product_
            attention`` (scale multiplies, default ``head_dim ** -0.5``) or
            a ``functools.partial`` of mmpretrain's
            ``scaled_dot_product_attention_pyimpl`` (scale divides).
        p_quantizer (FakeQuantizer): Quantizer of the softmax output.
        qkv (QuantQKV, optional): When given, its q / k / v quantizers act
            here instead of at its output (it is told to defer them), so the
            whole quantized attention can run as one
            :func:`~gplq_mm.quant.functional.lsq_attention`, which saves no
            N x N tensor and no quantized copy of q, k, v for backward. Held
            by reference: the quantizers stay registered (and saved) under
            ``qkv``.
    """

    def __init__(self, float_fn: Callable, p_quantizer: FakeQuantizer,
                 qkv: Optional[QuantQKV] = None):
        super().__init__()
        self.float_fn = float_fn
        self.p_quantizer = p_quantizer
        fn = float_fn.func if isinstance(float_fn, functools.partial) else \
            float_fn
        self._divides = fn.__name__.endswith('_pyimpl')
        self._fixed_scale = float_fn.keywords.get('scale') if isinstance(
            float_fn, functools.partial) else None
        self.__dict__['_qkv'] = qkv  # not a submodule
        if qkv is not None:
            qkv.defer_operands = True

    def _multiplier(self, q: torch.Tensor, scale: Optional[float]) -> float:
        scale = scale if scale is not None else self._fixed_scale
        if self._divides:
            return 1.0 / (scale or q.size(-1)**0.5)
        return scale if scale is not None else q.size(-1)**-0.5

    def _fusable(self, ops, attn_mask, dropout_p, is_causal) -> bool:
        """Whether :func:`QF.lsq_attention` computes this call: all four
        quantizers ``fusable``, per head (head axis -2 of
        ``(B, N, heads, d)`` for q / k / v, -3 of ``(B, heads, N, N)`` for
        the softmax) or per tensor; no mask, no dropout."""
        return (attn_mask is None and not is_causal and dropout_p == 0
                and all(q.fusable
                        and (q.step.numel() == 1 or q.axis == axis)
                        for q, axis in zip(ops + (self.p_quantizer, ),
                                           (-2, -2, -2, -3))))

    def forward(self, q, k, v, attn_mask=None, dropout_p=0., scale=None,
                is_causal=False):
        ops = () if self._qkv is None else (self._qkv.q_quantizer,
                                             self._qkv.k_quantizer,
                                             self._qkv.v_quantizer)
        if not any(_active(o) for o in ops + (self.p_quantizer, )):
            kwargs = dict(attn_mask=attn_mask, dropout_p=dropout_p,
                          is_causal=is_causal)
            if scale is not None:
                kwargs['scale'] = scale
            return self.float_fn(q, k, v, **kwargs)
        mult = self._multiplier(q, scale)
        if ops and self._fusable(ops, attn_mask, dropout_p, is_causal):
            p = self.p_quantizer
            return QF.lsq_attention(
                q, k, v, [o.step for o in ops + (p, )],
                (ops[0].qmin, ops[0].qmax), (p.qmin, p.qmax), mult)
        # Per-head quantizers see (B, N, heads, d), as at the qkv output.
        q, k, v = (o(x.transpose(1, 2)).transpose(1, 2)
                   for o, x in zip(ops, (q, k, v))) if ops else (q, k, v)
        attn = (q @ k.transpose(-2, -1)) * mult  # (B, heads, N, N)
        if is_causal:
            n, m = attn.shape[-2:]
            attn_mask = torch.ones(n, m, dtype=torch.bool,
                                   device=q.device).tril()
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn = attn.masked_fill(~attn_mask, float('-inf'))
            else:
                attn = attn + attn_mask
        attn = self.p_quantizer(attn.softmax(dim=-1))
        if dropout_p > 0:
            attn = F.dropout(attn, dropout_p, training=True)
        return attn @ v  # (B, heads, N, head_dim)


class QuantSeam(nn.Module):
    """A host submodule with a quantizer before or after it.

    Args:
        inner (nn.Module): The host's module (``nn.Softmax``, ``nn.Dropout``).
        p_quantizer (FakeQuantizer): The quantizer.
        after (bool): Quantize ``inner``'s output (True) or input (False).
    """

    def __init__(self, inner: nn.Module, p_quantizer: FakeQuantizer,
                 after: bool):
        super().__init__()
        self.inner, self.p_quantizer, self.after = inner, p_quantizer, after

    @property
    def p(self) -> float:  # timm reads attn_drop.p on its fused path
        return self.inner.p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.after:
            return self.p_quantizer(self.inner(x))
        return self.inner(self.p_quantizer(x))


def _quant_qkv(attn: nn.Module, cfgs: dict) -> None:
    if not isinstance(attn.qkv, QuantQKV):
        attn.qkv = QuantQKV.from_linear(attn.qkv, attn.num_heads, cfgs['act'],
                                        cfgs['weight'], cfgs['attn'])


def _p_quantizer(attn: nn.Module, cfgs: dict) -> FakeQuantizer:
    return _act_quantizer(cfgs['softmax'], attn.num_heads, -3).to(
        attn.qkv.weight.device)


def _seam(attn: nn.Module, name: str, cfgs: dict, after: bool) -> None:
    _quant_qkv(attn, cfgs)
    inner = getattr(attn, name)
    if not isinstance(inner, QuantSeam):
        setattr(attn, name, QuantSeam(inner, _p_quantizer(attn, cfgs), after))
    if hasattr(attn, 'fused_attn') and not hasattr(attn, '_gplq_fused_attn'):
        attn._gplq_fused_attn = attn.fused_attn


def _unseam(attn: nn.Module, name: str) -> None:
    inner = getattr(attn, name)
    if isinstance(inner, QuantSeam):
        setattr(attn, name, inner.inner)
    if hasattr(attn, '_gplq_fused_attn'):
        attn.fused_attn = attn.__dict__.pop('_gplq_fused_attn')


def _adapt_mmpretrain_mha(attn: nn.Module, cfgs: dict) -> None:
    _quant_qkv(attn, cfgs)
    fn = attn.scaled_dot_product_attention
    if not isinstance(fn, QuantSDPA):
        # v_shortcut adds v itself to the output: keep v quantized at the
        # qkv output then, as the host sees it.
        qkv = None if getattr(attn, 'v_shortcut', False) else attn.qkv
        attn.scaled_dot_product_attention = QuantSDPA(
            fn, _p_quantizer(attn, cfgs), qkv)


def _revert_mmpretrain_mha(attn: nn.Module) -> None:
    fn = attn.scaled_dot_product_attention
    if isinstance(fn, QuantSDPA):
        del attn.scaled_dot_product_attention
        attn.scaled_dot_product_attention = fn.float_fn
        if fn._qkv is not None:
            fn._qkv.defer_operands = False


def _adapt_timm_attention(attn: nn.Module, cfgs: dict) -> None:
    for name in ('q_norm', 'k_norm'):
        if not isinstance(getattr(attn, name, nn.Identity()), nn.Identity):
            raise ValueError(
                f'timm Attention with {name}={type(getattr(attn, name)).__name__}'
                ' has no adapter: q/k are quantized at the qkv output, '
                'which qk_norm would move; only qk_norm=False is supported')
    _seam(attn, 'attn_drop', cfgs, after=False)


# (adapt, revert) per host class, keyed by '<module>.<qualname>' so this
# package never imports the hosts.
ATTENTION_ADAPTERS: Dict[str, tuple] = {
    'mmpretrain.models.utils.attention.MultiheadAttention':
    (_adapt_mmpretrain_mha, _revert_mmpretrain_mha),
    'mmpretrain.models.utils.attention.WindowMSA':
    (lambda m, c: _seam(m, 'softmax', c, True),
     lambda m: _unseam(m, 'softmax')),
    'mmdet.models.backbones.swin.WindowMSA':
    (lambda m, c: _seam(m, 'softmax', c, True),
     lambda m: _unseam(m, 'softmax')),
    'timm.layers.attention.Attention':
    (_adapt_timm_attention, lambda m: _unseam(m, 'attn_drop')),
    'timm.models.swin_transformer.WindowAttention':
    (lambda m, c: _seam(m, 'softmax', c, True),
     lambda m: _unseam(m, 'softmax')),
}

# Classes that look like attention but only wrap an adapted one.
PASS_THROUGH = (
    'mmpretrain.models.utils.attention.ShiftWindowMSA',
    'mmdet.models.backbones.swin.ShiftWindowMSA',
)


def _qualname(cls: type) -> str:
    return f'{cls.__module__}.{cls.__qualname__}'


def find_adapter(mod: nn.Module):
    """``(adapt, revert)`` for ``mod``'s class or nearest adapted base;
    ``'pass'`` for known wrappers; None if ``mod`` is not attention; raises
    ``ValueError`` for attention without an adapter."""
    for cls in type(mod).__mro__:
        name = _qualname(cls)
        if name in ATTENTION_ADAPTERS:
            return ATTENTION_ADAPTERS[name]
        if name in PASS_THROUGH:
            return 'pass'
    cname = type(mod).__name__
    if isinstance(mod, nn.MultiheadAttention) or cname.endswith(
        ('Attention', 'MSA', 'Attn')):
        raise ValueError(
            f'attention class {_qualname(type(mod))} has no quantization '
            f'adapter; supported: {sorted(ATTENTION_ADAPTERS)}. Exclude it '
            'with an `exclude` pattern or add an adapter.')
    return None


def refresh_attention_paths(model: nn.Module) -> None:
    """Keep a host's fused attention path only while none of the module's
    attention quantizers is active (enabled or observing)."""
    for mod in model.modules():
        if '_gplq_fused_attn' in mod.__dict__:
            active = any(
                _active(q) for n, q in mod.named_modules()
                if n.endswith(OPERAND_QUANTIZERS))
            mod.fused_attn = mod._gplq_fused_attn and not active
