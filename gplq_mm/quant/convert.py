"""convert / revert / set_quant_state / calibration over a whole model."""
import contextlib
import dataclasses
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from . import functional as QF
from .hosts import (attention_tokens, find_attention_seam, fold_pairs,
                    is_block)
from .layers import QuantConv2d, QuantLinear, is_quant_layer, iter_quantizers
from .qwt import attach_compensator, detach_compensator
from .quantizer import GRIDS, INIT_METHODS, FakeQuantizer

__all__ = ['QuantConfig', 'convert', 'revert', 'set_quant_state',
           'calibration', 'composed_paths', 'quantize_weights', 'qwt_blocks',
           'fold_act_steps']

_BIT_FIELDS = ('w_bits', 'a_bits', 'attn_bits', 'patch_embed_bits')


@dataclass(frozen=True)
class QuantConfig:
    """What :func:`convert` quantizes and how.

    Args:
        w_bits (int): Weight bits, per output channel. Defaults to 4.
        a_bits (int): Bits of Linear / Conv2d inputs. Defaults to 4.
        attn_bits (int, optional): Bits of q, k, v and the softmax output.
            Defaults to None (= ``a_bits``).
        patch_embed_bits (int): Input bits of the layers matching
            ``patch_embed_patterns``. Defaults to 8.
        patch_embed_patterns (tuple[str]): fnmatch patterns over module
            names. Defaults to ``('*patch_embed*',)``.
        act_granularity (str): Linear / Conv2d inputs: ``'channel'`` (one step
            per input feature) or ``'tensor'``. Defaults to ``'channel'``.
        attn_granularity (str): q, k, v and softmax output: ``'head'`` (one
            step per head), ``'token'`` (one per token, the softmax's per
            query row; the token count comes from the host registry, so the
            inputs must have the configured size) or ``'tensor'``.
            Defaults to ``'head'``.
        act_init (str): Linear / Conv2d inputs: ``'minmax'`` or
            ``'percentile'``. Defaults to ``'minmax'``.
        attn_init (str): q, k, v. Defaults to ``'percentile'``.
        softmax_init (str): Softmax output. Defaults to ``'minmax'``.
        softmax_grid (str): Softmax output grid: ``'uniform'``, ``'log2'``
            or ``'log_sqrt2'``.
            Defaults to ``'uniform'``.
        percentile (tuple[float]): ``(low, high)`` for percentile init.
            Defaults to ``(0.01, 0.99)``.
        act_learnable (bool): LSQ-train activation steps. Defaults to True.
        weight_learnable (bool): LSQ-train weight steps (direct W4A4 QAT).
            Defaults to False.
        include (tuple[str]): fnmatch patterns over module names; a match
            covers the module's whole subtree. Defaults to ``('*',)``.
        exclude (tuple[str]): Same, removed from the scope. Defaults to
            ``()``.
        qwt (bool): Allocate QwT compensators on the transformer blocks in
            scope. Defaults to True.
        deployable (bool): Integer-kernel form (every matmul operand with
            one step, as onnxruntime's integer kernels take it): Linear /
            Conv2d inputs get ``act_granularity`` only where one producer
            feeds the layer alone, a LayerNorm or a layer followed by ReLU
            (:func:`~gplq_mm.quant.hosts.fold_pairs`), so the per-channel
            steps fold exactly into the producer (:func:`fold_act_steps`,
            run before weight PTQ) and become one step; every other input,
            q, k, v and the softmax output are quantized per tensor
            (``attn_granularity`` is not used). Defaults to False.
    """
    w_bits: int = 4
    a_bits: int = 4
    attn_bits: Optional[int] = None
    patch_embed_bits: int = 8
    patch_embed_patterns: Tuple[str, ...] = ('*patch_embed*', )
    act_granularity: str = 'channel'
    attn_granularity: str = 'head'
    act_init: str = 'minmax'
    attn_init: str = 'percentile'
    softmax_init: str = 'minmax'
    softmax_grid: str = 'uniform'
    percentile: Tuple[float, float] = (0.01, 0.99)
    act_learnable: bool = True
    weight_learnable: bool = False
    include: Tuple[str, ...] = ('*', )
    exclude: Tuple[str, ...] = ()
    qwt: bool = True
    deployable: bool = False

    def __post_init__(self):
        for f in ('patch_embed_patterns', 'include', 'exclude', 'percentile'):
            val = getattr(self, f)
            if isinstance(val, str):
                val = (val, )
            object.__setattr__(self, f, tuple(val))
        for f in _BIT_FIELDS:
            v = getattr(self, f)
            if v is None and f == 'attn_bits':
                continue
            if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 8:
                raise ValueError(f'QuantConfig.{f}={v!r} is not allowed: '
                                 'use an int in 2..8')
        for f, allowed in (('act_granularity', ('channel', 'tensor')),
                           ('attn_granularity', ('head', 'token', 'tensor')),
                           ('act_init', INIT_METHODS),
                           ('attn_init', INIT_METHODS),
                           ('softmax_init', INIT_METHODS),
                           ('softmax_grid', GRIDS)):
            if getattr(self, f) not in allowed:
                raise ValueError(f'QuantConfig.{f}={getattr(self, f)!r} is '
                                 f'not allowed: use one of {allowed}')
        lo, hi = self.percentile
        if not 0 <= lo < hi <= 1:
            raise ValueError(f'QuantConfig.percentile={self.percentile!r} is '
                             'not allowed: use (low, high), 0 <= low < high '
                             '<= 1')

    @classmethod
    def from_any(cls, cfg: Union['QuantConfig', dict, None]) -> 'QuantConfig':
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        if not isinstance(cfg, dict):
            raise TypeError(f'quant config must be a dict or QuantConfig, '
                            f'got {type(cfg).__name__}')
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f'QuantConfig has no field(s) {unknown}; '
                             f'allowed: {sorted(names)}')
        return cls(**cfg)

    def quantizer_cfgs(self, patch_embed: bool = False,
                       folds: bool = False) -> dict:
        """Quantizer configs of a layer (``folds``: a LayerNorm alone feeds
        it, see ``deployable``)."""
        attn_bits = self.attn_bits or self.a_bits
        head = 'tensor' if self.attn_granularity == 'tensor' else 'channel'
        act = self.act_granularity
        if self.deployable:
            head = 'tensor'
            if patch_embed or not folds:
                act = 'tensor'
        return dict(
            act=dict(
                bits=self.patch_embed_bits if patch_embed else self.a_bits,
                granularity=act, init=self.act_init,
                percentile=self.percentile, learnable=self.act_learnable),
            weight=dict(bits=self.w_bits, learnable=self.weight_learnable),
            attn=dict(bits=attn_bits, granularity=head, init=self.attn_init,
                      percentile=self.percentile,
                      learnable=self.act_learnable),
            softmax=dict(bits=attn_bits, signed=False, granularity=head,
                         init=self.softmax_init, percentile=self.percentile,
                         learnable=self.act_learnable,
                         grid=self.softmax_grid))


def _prefixes(name: str) -> Iterator[str]:
    parts = name.split('.')
    for i in range(1, len(parts) + 1):
        yield '.'.join(parts[:i])


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return bool(name) and any(
        fnmatch(p, pat) for p in _prefixes(name) for pat in patterns)


def _in_scope(name: str, cfg: QuantConfig) -> bool:
    return _matches(name, cfg.include) and not _matches(name, cfg.exclude)


def convert(model: nn.Module,
            config: Union[QuantConfig, dict, None] = None) -> nn.Module:
    """Quantize ``model`` in place (and return it); idempotent.

    Linear / Conv2d in scope become :class:`QuantLinear` /
    :class:`QuantConv2d` sharing the float Parameters; supported attention
    classes get q / k / v / softmax-output quantizers; transformer blocks
    get QwT compensators (``config.qwt``). Every quantizer starts disabled
    and uninitialized, so the converted model computes the float output.

    Raises:
        ValueError: an include pattern that matches no module, or an
            attention class in scope without an adapter.
    """
    cfg = QuantConfig.from_any(config)
    names = [n for n, _ in model.named_modules() if n]
    for pat in cfg.include:
        if not any(fnmatch(n, pat) for n in names):
            raise ValueError(
                f'QuantConfig.include pattern {pat!r} matches no module; '
                f'module names look like {names[:5]}')
    folded = {lin for _, lin in fold_pairs(model)}
    for name, mod in list(model.named_modules()):
        if (_in_scope(name, cfg) and not is_quant_layer(mod)
                and not isinstance(mod, FakeQuantizer)):
            seam = find_attention_seam(mod)
            if seam is not None:  # the seams quantize the host's `qkv`
                cfgs = cfg.quantizer_cfgs(folds=f'{name}.qkv' in folded)
                if cfgs['attn']['granularity'] == 'channel' and \
                        cfg.attn_granularity == 'token':
                    cfgs['tokens'] = _tokens(model, name)
                seam.adapt(mod, cfgs)
    for name, parent in list(model.named_modules()):
        for cname, child in list(parent.named_children()):
            full = f'{name}.{cname}' if name else cname
            if not _in_scope(full, cfg) or is_quant_layer(child):
                continue
            pe = _matches(full, cfg.patch_embed_patterns)
            cfgs = cfg.quantizer_cfgs(patch_embed=pe, folds=full in folded)
            if isinstance(child, nn.Linear):
                new = QuantLinear.from_float(child, cfgs['act'],
                                             cfgs['weight'])
            elif isinstance(child, nn.Conv2d):
                new = QuantConv2d.from_float(child, cfgs['act'],
                                             cfgs['weight'])
            else:
                continue
            setattr(parent, cname, new)
    if cfg.qwt:
        for _, block in qwt_blocks(model, cfg):
            attach_compensator(block)
    return model


def _tokens(model: nn.Module, name: str) -> int:
    tokens = attention_tokens(model, name)
    if tokens is None:
        raise ValueError(
            f"QuantConfig.attn_granularity='token': no host rule gives the "
            f'token count of attention {name!r} '
            f'({type(model.get_submodule(name)).__qualname__}); register '
            "one (HostSpec.tokens) or use 'head'")
    return tokens


def qwt_blocks(model: nn.Module, config=None):
    """``(name, block)`` of the transformer blocks in scope, forward order."""
    cfg = QuantConfig.from_any(config)
    return [(n, m) for n, m in model.named_modules()
            if is_block(m) and _in_scope(n, cfg)]


def revert(model: nn.Module) -> nn.Module:
    """Undo :func:`convert`: float module types, Parameters kept."""
    for mod in list(model.modules()):
        seam = None if is_quant_layer(mod) else find_attention_seam(
            mod, strict=False)
        if seam is not None:
            seam.revert(mod)
        detach_compensator(mod)
    for parent in list(model.modules()):
        for cname, child in list(parent.named_children()):
            if is_quant_layer(child):
                setattr(parent, cname, child.to_float())
    return model.to_float() if is_quant_layer(model) else model


def set_quant_state(model: nn.Module,
                    weight: Optional[bool] = None,
                    act: Optional[bool] = None) -> nn.Module:
    """Enable / disable weight and activation quantizers (None: leave)."""
    for _, q in iter_quantizers(model):
        flag = weight if q.role == 'weight' else act
        if flag is not None:
            q.enabled = flag
    return model


@contextlib.contextmanager
def calibration(model: nn.Module, role: str = 'act'):
    """Within the block, the ``role`` quantizers observe (and pass data
    through unchanged); on normal exit each sets its step from what it saw,
    reduced over ranks. Quantizers of the other role keep their state."""
    qs = [q for _, q in iter_quantizers(model, role)]
    for q in qs:
        q.start_observing()
    try:
        yield qs
    except BaseException:
        for q in qs:
            q.stop_observing()
        raise
    for q in qs:
        q.finish_calibration()


@contextlib.contextmanager
def composed_paths(model: nn.Module):
    """Within the block every quantizer is called by its site (the fused
    Linear / q-k-v / attention functions stand aside), so forward hooks on
    the quantizers see every quantized tensor. Same values up to float
    rounding; slower and more memory in training."""
    qs = [q for _, q in iter_quantizers(model)]
    saved = [q.fuse for q in qs]
    for q in qs:
        q.fuse = False
    try:
        yield qs
    finally:
        for q, f in zip(qs, saved):
            q.fuse = f


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
            wq = mod.weight_quantizer
            wq.set_step(
                QF.search_weight_step(mod.weight, wq.qmin, wq.qmax,
                                      candidates))
            n += 1
    return n


def _scale_outputs(mod: nn.Module, k: torch.Tensor) -> None:
    """Multiply ``mod``'s output channel ``c`` by ``k[c]`` (> 0): its weight
    along the output axis and its bias."""
    axis = 1 if isinstance(mod, nn.ConvTranspose2d) else 0
    shape = [1] * mod.weight.dim()
    shape[axis] = -1
    mod.weight.mul_(k.view(shape).to(mod.weight.dtype))
    if getattr(mod, 'bias', None) is not None:
        mod.bias.mul_(k.to(mod.bias.dtype))


@torch.no_grad()
def fold_act_steps(model: nn.Module) -> int:
    """Fold the per-channel input steps ``s`` of each layer whose input a
    single producer feeds (:func:`~gplq_mm.quant.hosts.fold_pairs`: a
    LayerNorm, or a layer followed by ReLU only) into that producer: with
    ``s0 = mean(s)``, the producer's output channels are scaled by
    ``s0 / s`` (ReLU commutes with positive scales) and the layer's weight
    columns by ``s / s0``, and every step becomes ``s0``. The integer codes
    and the float function are unchanged (up to float rounding); the layer
    now needs one input scale, as an integer kernel does. Run it before the
    weights are quantized (they are quantized after the fold). Idempotent.
    Returns the number of layers folded."""
    n = 0
    for src_name, dst_name in fold_pairs(model):
        src, dst = model.get_submodule(src_name), model.get_submodule(
            dst_name)
        iq = getattr(dst, 'input_quantizer', None)
        if (iq is None or iq.step.numel() == 1 or not bool(iq.initialized)
                or getattr(src, 'weight', None) is None):
            continue
        s = iq.step.detach()
        r = s / s.mean()
        _scale_outputs(src, 1 / r)
        shape = [1] * dst.weight.dim()
        shape[1] = -1
        dst.weight.mul_(r.view(shape).to(dst.weight.dtype))
        iq.set_step(s.mean())
        n += 1
    return n
