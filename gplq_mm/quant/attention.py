"""Quantized attention at seams the hosts already have; none copies a host
``forward``. Which host uses which seam is in :mod:`gplq_mm.quant.hosts`.

* q, k, v: the host's fused ``qkv`` Linear becomes a
  :class:`~gplq_mm.quant.layers.QuantQKV` whose named ``q/k/v_quantizer``
  act on its output (every host only reshapes it, and scales q by a
  constant, before the matmuls).
* softmax output (``p_quantizer``, unsigned), two kinds of seam:
    - :class:`SDPASeam`: the host calls an attribute holding a
      scaled-dot-product-attention function; it becomes :class:`QuantSDPA`,
      which calls the host's function while its quantizers are off and owns
      the attention math while they are on.
    - :class:`ModuleSeam`: the host calls a submodule right after (or
      before) its softmax; it becomes :class:`QuantSeam` (quantizer + the
      host's module). A host flag that selects a fused path skipping the
      submodule is switched off by convert and restored by revert.
"""
import dataclasses
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fused import lsq_attention
from .layers import QuantLinear, QuantQKV, act_quantizer
from .quantizer import FakeQuantizer

__all__ = ['QuantSDPA', 'QuantSeam', 'SDPASeam', 'ModuleSeam',
           'composed_attention', 'sdpa_multiplier']


class QuantSDPA(nn.Module):
    """Stands in for a host's scaled-dot-product-attention function.

    Args:
        float_fn (callable): The host's function, called as
            ``float_fn(q, k, v, attn_mask=..., dropout_p=..., is_causal=...,
            scale=...)`` with ``(B, heads, N, d)`` tensors.
        p_quantizer (FakeQuantizer): Quantizer of the softmax output.
        divides (bool): ``scale`` divides the scores (``q k^T / scale``)
            instead of multiplying them; both default to ``head_dim ** 0.5``.
        fixed_scale (float, optional): A scale bound into ``float_fn``.
        operands (tuple[FakeQuantizer]): The q / k / v quantizers applied
            here (those of a deferred :class:`QuantQKV`, which keeps them
            registered and saved), so the whole quantized attention can run
            as one :func:`~gplq_mm.quant.fused.lsq_attention`, which saves no
            N x N tensor and no quantized copy of q, k, v for backward.
            Empty: q / k / v are quantized elsewhere. Defaults to ``()``.
    """

    def __init__(self, float_fn: Callable, p_quantizer: FakeQuantizer,
                 divides: bool = False, fixed_scale: Optional[float] = None,
                 operands: Sequence[FakeQuantizer] = ()):
        super().__init__()
        self.float_fn = float_fn
        self.p_quantizer = p_quantizer
        self.divides, self.fixed_scale = divides, fixed_scale
        # A tuple is not registered: the quantizers stay under the qkv layer.
        self.operands = tuple(operands)

    def _multiplier(self, q: torch.Tensor, scale: Optional[float]) -> float:
        return sdpa_multiplier(q, scale, self.fixed_scale, self.divides)

    def _fusable(self, attn_mask, dropout_p, is_causal) -> bool:
        """Whether :func:`lsq_attention` computes this call: all four
        quantizers fuse per head (head axis -2 of ``(B, N, heads, d)`` for
        q / k / v, -3 of ``(B, heads, N, N)`` for the softmax) or per
        tensor; no mask, no dropout."""
        return (bool(self.operands) and attn_mask is None and not is_causal
                and dropout_p == 0
                and all(q.fuses(axis) for q, axis in zip(
                    self.operands + (self.p_quantizer, ), (-2, -2, -2, -3))))

    def forward(self, q, k, v, attn_mask=None, dropout_p=0., scale=None,
                is_causal=False):
        ops = self.operands
        if not any(o.active for o in ops + (self.p_quantizer, )):
            kwargs = dict(attn_mask=attn_mask, dropout_p=dropout_p,
                          is_causal=is_causal)
            if scale is not None:
                kwargs['scale'] = scale
            return self.float_fn(q, k, v, **kwargs)
        mult = self._multiplier(q, scale)
        if self._fusable(attn_mask, dropout_p, is_causal):
            p = self.p_quantizer
            return lsq_attention(q, k, v, [o.step for o in ops + (p, )],
                                 (ops[0].qmin, ops[0].qmax), (p.qmin, p.qmax),
                                 mult)
        return composed_attention(q, k, v, ops, self.p_quantizer, mult,
                                  attn_mask, dropout_p, is_causal)


def sdpa_multiplier(q: torch.Tensor, scale: Optional[float],
                    fixed_scale: Optional[float], divides: bool) -> float:
    """What the scores ``q k^T`` are multiplied by: the call's ``scale`` or
    the host's bound one, inverted when the host function divides by it;
    by default ``head_dim ** -0.5``."""
    scale = scale if scale is not None else fixed_scale
    if divides:
        return 1.0 / (scale or q.size(-1)**0.5)
    return scale if scale is not None else q.size(-1)**-0.5


def composed_attention(q, k, v, operands: Sequence[nn.Module],
                       p_quantizer: nn.Module, mult: float, attn_mask=None,
                       dropout_p: float = 0., is_causal: bool = False):
    """Quantized attention from its parts, each quantizer (a module) called:
    ``operands`` (q, k, v; may be empty) on ``(B, N, heads, d)`` views, as
    at the qkv output, and ``p_quantizer`` on the softmax of ``q k^T *
    mult``; the mask and dropout as ``F.scaled_dot_product_attention``.
    ``q, k, v``: ``(B, heads, N, d)``."""
    if operands:
        q, k, v = (o(x.transpose(1, 2)).transpose(1, 2)
                   for o, x in zip(operands, (q, k, v)))
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
    attn = p_quantizer(attn.softmax(dim=-1))
    if dropout_p > 0:
        attn = F.dropout(attn, dropout_p, training=True)
    return attn @ v  # (B, heads, N, head_dim)


class QuantSeam(nn.Module):
    """A host submodule with a quantizer before or after it.

    Args:
        inner (nn.Module): The host's module (``nn.Softmax``, ``nn.Dropout``).
        p_quantizer (FakeQuantizer): The quantizer.
        after (bool): Quantize ``inner``'s output (True) or input (False).
        host_flags (dict): Host flags that select a fused path skipping
            ``inner``, with the host's values: :meth:`select_path` keeps
            them False while the quantizer is active and the host's values
            otherwise; revert restores them. Defaults to None.
    """

    def __init__(self, inner: nn.Module, p_quantizer: FakeQuantizer,
                 after: bool, host_flags: Optional[dict] = None):
        super().__init__()
        self.inner, self.p_quantizer, self.after = inner, p_quantizer, after
        self.host_flags = dict(host_flags or {})
        self.handle = None

    def select_path(self, attn: nn.Module, args) -> None:
        """Forward pre-hook of the host attention: the host's explicit path
        (through ``inner``) while the quantizer is active, the host's own
        choice otherwise, so a converted model with its quantizers off
        computes exactly what the host computes."""
        for k, v in self.host_flags.items():
            setattr(attn, k, v and not self.p_quantizer.active)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.after:
            return self.p_quantizer(self.inner(x))
        return self.inner(self.p_quantizer(x))


def _softmax_quantizer(attn: nn.Module, cfgs: dict,
                       projection: str) -> FakeQuantizer:
    """Per head (axis -3 of ``(B, heads, N, N)``), per query token (axis -2)
    when ``cfgs['tokens']`` is given, or per tensor."""
    tokens = cfgs.get('tokens')
    return act_quantizer(cfgs['softmax'], tokens or attn.num_heads,
                         -2 if tokens else -3,
                         getattr(attn, projection).weight.device)


def _quant_qkv(attn: nn.Module, cfgs: dict, deferred: bool,
               projection: str) -> QuantQKV:
    """The host's fused q / k / v projection (attribute ``projection``) as a
    :class:`QuantQKV`."""
    lin = getattr(attn, projection)
    if not isinstance(lin, QuantQKV):
        if isinstance(lin, QuantLinear):
            lin = lin.to_float()
        lin = QuantQKV.from_float(
            lin, cfgs['act'], cfgs['weight'], num_heads=attn.num_heads,
            attn_cfg=cfgs['attn'], deferred=deferred,
            tokens=cfgs.get('tokens'))
        setattr(attn, projection, lin)
    return lin


@dataclasses.dataclass(frozen=True)
class SDPASeam:
    """The host calls ``self.<attr>(q, k, v, ...)``, a scaled dot-product
    attention function (``F.scaled_dot_product_attention`` or the host's
    own).

    Args:
        attr (str): The attribute.
        divides (callable): ``fn -> bool``: whether the host function
            divides by its scale (see :class:`QuantSDPA`).
        fuse_qkv (callable): ``attention -> bool``: whether q / k / v may be
            quantized inside the attention (False where the host uses v
            elsewhere too). Defaults to always.
        projection (str): The host's fused q / k / v Linear, whose output
            the host only reshapes (and scales q) before the matmuls.
            Defaults to ``'qkv'``.
    """
    attr: str
    divides: Callable[[Callable], bool]
    fuse_qkv: Callable[[nn.Module], bool] = lambda attn: True
    projection: str = 'qkv'

    def adapt(self, attn: nn.Module, cfgs: dict) -> None:
        fuse = self.fuse_qkv(attn)
        qkv = _quant_qkv(attn, cfgs, fuse, self.projection)
        fn = getattr(attn, self.attr)
        if isinstance(fn, QuantSDPA):
            return
        keywords = getattr(fn, 'keywords', None) or {}
        setattr(attn, self.attr, QuantSDPA(
            fn, _softmax_quantizer(attn, cfgs, self.projection),
            divides=self.divides(fn), fixed_scale=keywords.get('scale'),
            operands=qkv.operand_quantizers if fuse else ()))

    def revert(self, attn: nn.Module) -> None:
        fn = getattr(attn, self.attr)
        if isinstance(fn, QuantSDPA):
            delattr(attn, self.attr)
            setattr(attn, self.attr, fn.float_fn)


@dataclasses.dataclass(frozen=True)
class ModuleSeam:
    """The host calls ``self.<attr>`` (a module) right after its softmax
    (``after=False``: the quantizer runs before it) or is it (``after=True``:
    the quantizer runs after it).

    Args:
        attr (str): The submodule.
        after (bool): See above.
        explicit_path (str, optional): A host flag that, when True, selects
            a fused path that skips ``attr``: convert registers a forward
            pre-hook on the attention that holds it False while the
            quantizer is active (:meth:`QuantSeam.select_path`); revert
            removes the hook and restores the host's value.
            Defaults to None.
        require_identity (tuple[str]): Submodules that must be
            ``nn.Identity`` (or absent) for the seam to be exact.
        projection (str): As :class:`SDPASeam`. Defaults to ``'qkv'``.
    """
    attr: str
    after: bool
    explicit_path: Optional[str] = None
    require_identity: Tuple[str, ...] = ()
    projection: str = 'qkv'

    def adapt(self, attn: nn.Module, cfgs: dict) -> None:
        for name in self.require_identity:
            sub = getattr(attn, name, None)
            if sub is not None and not isinstance(sub, nn.Identity):
                raise ValueError(
                    f'{type(attn).__qualname__} with {name}='
                    f'{type(sub).__name__} has no quantization adapter: '
                    'q / k are quantized at the qkv output, which '
                    f'{name} would move; only {name}=Identity is supported')
        _quant_qkv(attn, cfgs, False, self.projection)
        inner = getattr(attn, self.attr)
        if isinstance(inner, QuantSeam):
            return
        flags = {}
        if self.explicit_path is not None:
            flags[self.explicit_path] = getattr(attn, self.explicit_path)
        seam = QuantSeam(inner, _softmax_quantizer(attn, cfgs,
                                                   self.projection),
                         self.after, flags)
        setattr(attn, self.attr, seam)
        if flags:
            seam.handle = attn.register_forward_pre_hook(seam.select_path)

    def revert(self, attn: nn.Module) -> None:
        seam = getattr(attn, self.attr)
        if isinstance(seam, QuantSeam):
            if seam.handle is not None:
                seam.handle.remove()
            setattr(attn, self.attr, seam.inner)
            for k, v in seam.host_flags.items():
                setattr(attn, k, v)
