"""QuantConfig: what :func:`~gplq_mm.quant.convert` quantizes and how,
validated once at the boundary."""
import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple, Union

from .quantizer import GRIDS, INIT_METHODS

__all__ = ['QuantConfig']

_BIT_FIELDS = ('w_bits', 'a_bits', 'attn_bits', 'patch_embed_bits',
               'output_bits')


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
        output_bits (int): Bits of the outputs deployable mode requantizes
            (``HostSpec.requantized_outputs``: the FPN's outputs, which
            RoIAlign reads). Defaults to 8.
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
    output_bits: int = 8
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
            if (isinstance(v, bool) or not isinstance(v, int)
                    or not 2 <= v <= 8):
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
                       folds: bool = False, after_relu: bool = False) -> dict:
        """Quantizer configs of a layer (``folds``: a single producer feeds
        it, see ``deployable``; ``after_relu``: through a ReLU, so in
        deployable mode its input grid is unsigned, ``[0, 2^b - 1]``: the
        whole grid for the non-negative values, and the zero point 0 with
        which onnxruntime drops the ReLU and fuses the producing conv and
        this quantizer into QLinearConv)."""
        attn_bits = self.attn_bits or self.a_bits
        head = 'tensor' if self.attn_granularity == 'tensor' else 'channel'
        act = self.act_granularity
        signed = True
        if self.deployable:
            head = 'tensor'
            signed = not after_relu
            if patch_embed or not folds:
                act = 'tensor'
        return dict(
            act=dict(
                bits=self.patch_embed_bits if patch_embed else self.a_bits,
                granularity=act, init=self.act_init, signed=signed,
                percentile=self.percentile, learnable=self.act_learnable),
            weight=dict(bits=self.w_bits, learnable=self.weight_learnable),
            attn=dict(bits=attn_bits, granularity=head, init=self.attn_init,
                      percentile=self.percentile,
                      learnable=self.act_learnable),
            softmax=dict(bits=attn_bits, signed=False, granularity=head,
                         init=self.softmax_init, percentile=self.percentile,
                         learnable=self.act_learnable,
                         grid=self.softmax_grid))
