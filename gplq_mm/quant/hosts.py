"""Everything gplq_mm knows about the host models, in one registry.

A :class:`HostSpec` says, for one host model family, how its attention is
quantized (the seam, see :mod:`gplq_mm.quant.attention`), which attention
classes only wrap an adapted one, what a transformer block is (QwT
compensates each), which LayerNorm feeds which Linear inside a block (RepQ
reparameterization, the block width) and how wide the features its
classification heads consume are. Classes are named by
``'<module>.<qualname>'``, so nothing here imports a host, and matched over
the MRO, so subclasses inherit their base's entry.

Adding a host is one :func:`register_host` call (and its test); code
elsewhere asks the lookups below and never matches class names.
"""
import dataclasses
import sys
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch.nn as nn

from .attention import ModuleSeam, SDPASeam

__all__ = ['HostSpec', 'register_host', 'HOSTS', 'find_attention_seam',
           'is_block', 'block_width', 'ln_linear_pairs', 'fold_pairs',
           'attention_tokens', 'head_feature_dim', 'model_task']

Seam = Union[SDPASeam, ModuleSeam]
LNLinear = Tuple[Tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class HostSpec:
    """What gplq_mm knows about one host model family.

    Args:
        name (str): A readable name (error messages, docs).
        attention (dict): Attention class -> its seam.
        wrappers (tuple[str]): Attention-like classes that only contain an
            adapted attention (e.g. shifted-window wrappers); left alone.
        blocks (dict): Transformer block class -> its ``(LayerNorm, Linear
            reading its output)`` submodule pairs; the first LayerNorm's
            width is the block's width.
        heads (dict): Classification head class -> ``head -> int``, the width
            of the feature the head's ``pre_logits`` returns (concatenated
            when it returns several).
        models (dict): Whole-model class -> the GPLQ task it is
            (``'classifier'``, ``'two-stage detector'``): which GPLQ wrapper
            takes it.
        folds (dict): Module class -> ``module -> (producer, layer)
            pairs`` (submodule names) where the producer's output reaches
            the Linear / Conv2d ``layer``, and nothing else, directly or
            through a ReLU: a LayerNorm, or a Linear / Conv / norm followed
            by ReLU. A per-channel input step of the layer then folds
            exactly into the producer's output channels (deployable mode).
            The blocks' (LayerNorm, Linear) pairs count too.
        tokens (dict): Module class -> ``module -> int``, the number of
            tokens each attention at or below the module attends over (a
            window's positions, or a ViT's patches plus its extra tokens):
            what per-token attention steps are allocated for.
    """
    name: str
    attention: Dict[str, Seam] = dataclasses.field(default_factory=dict)
    wrappers: Tuple[str, ...] = ()
    blocks: Dict[str, LNLinear] = dataclasses.field(default_factory=dict)
    heads: Dict[str, Callable[[nn.Module], int]] = dataclasses.field(
        default_factory=dict)
    models: Dict[str, str] = dataclasses.field(default_factory=dict)
    folds: Dict[str, Callable[[nn.Module], LNLinear]] = dataclasses.field(
        default_factory=dict)
    tokens: Dict[str, Callable[[nn.Module], int]] = dataclasses.field(
        default_factory=dict)


HOSTS: List[HostSpec] = []


def register_host(spec: HostSpec) -> HostSpec:
    """Add ``spec``; a class already claimed by another host is an error."""
    for other in HOSTS:
        for kind in ('attention', 'blocks', 'heads', 'models', 'folds',
                     'tokens'):
            both = set(getattr(spec, kind)) & set(getattr(other, kind))
            if both:
                raise ValueError(f'{spec.name}: {kind} {sorted(both)} already '
                                 f'registered by {other.name}')
    HOSTS.append(spec)
    return spec


def _lookup(mod: nn.Module, kind: str):
    """The entry of ``mod``'s class (or nearest registered base) in the
    ``kind`` tables of all hosts, or None."""
    for cls in type(mod).__mro__:
        key = f'{cls.__module__}.{cls.__qualname__}'
        for spec in HOSTS:
            table = getattr(spec, kind)
            if key in table:
                return table[key] if isinstance(table, dict) else True
    return None


def find_attention_seam(mod: nn.Module,
                        strict: bool = True) -> Optional[Seam]:
    """The seam of ``mod`` if it is a registered attention; None for
    anything else, registered wrappers included.

    Raises:
        ValueError: with ``strict``, when ``mod`` looks like attention
            (``nn.MultiheadAttention``, or a module with ``num_heads`` and a
            ``qkv`` Linear) but no host registers it.
    """
    seam = _lookup(mod, 'attention')
    if seam is not None or _lookup(mod, 'wrappers') or not strict:
        return seam
    looks_like = isinstance(mod, nn.MultiheadAttention) or (
        hasattr(mod, 'num_heads') and isinstance(
            getattr(mod, 'qkv', None), nn.Linear))
    if looks_like:
        known = sorted(k for s in HOSTS for k in s.attention)
        raise ValueError(
            f'attention class {type(mod).__module__}.'
            f'{type(mod).__qualname__} has no quantization adapter; '
            f'supported: {known}. Exclude it with an `exclude` pattern or '
            'register a host (gplq_mm.quant.hosts.register_host).')
    return None


def is_block(mod: nn.Module) -> bool:
    return _lookup(mod, 'blocks') is not None


def ln_linear_pairs(block: nn.Module) -> List[Tuple[nn.Module, nn.Module]]:
    """``(LayerNorm, Linear)`` module pairs of a registered block."""
    pairs = _lookup(block, 'blocks')
    if pairs is None:
        raise ValueError(f'block {type(block).__qualname__} is not registered '
                         'in gplq_mm.quant.hosts')
    return [(block.get_submodule(ln), block.get_submodule(lin))
            for ln, lin in pairs]


def fold_pairs(model: nn.Module) -> List[Tuple[str, str]]:
    """``(producer name, layer name)`` of every pair in ``model`` (names
    relative to ``model``) whose producer feeds only that layer (see
    ``HostSpec.folds``): the registered blocks' pairs and the ``folds``
    entries."""
    out = []
    for name, mod in model.named_modules():
        pairs = _lookup(mod, 'blocks')
        rule = _lookup(mod, 'folds')
        if rule is not None:
            pairs = rule(mod)
        for ln, lin in pairs or ():
            out.append(tuple(f'{name}.{n}' if name else n for n in (ln, lin)))
    return out


def attention_tokens(model: nn.Module, name: str) -> Optional[int]:
    """Tokens the attention ``name`` of ``model`` attends over: the
    ``tokens`` rule of the module itself or of its nearest ancestor with
    one; None when no host registers one."""
    parts = name.split('.')
    for i in range(len(parts), -1, -1):
        mod = model.get_submodule('.'.join(parts[:i]))
        rule = _lookup(mod, 'tokens')
        if rule is not None:
            return int(rule(mod))
    return None


def block_width(block: nn.Module) -> int:
    """Width of a registered block's input and output tokens."""
    return ln_linear_pairs(block)[0][0].normalized_shape[-1]


def model_task(model: nn.Module) -> Optional[str]:
    """The GPLQ task of a whole host model (``'classifier'``, ``'two-stage
    detector'``), or None when no host registers its class."""
    return _lookup(model, 'models')


def head_feature_dim(head: nn.Module) -> int:
    """Width of ``head.pre_logits``'s output: the registered rule, else
    ``hidden_dim`` (a pre-logits layer) or ``in_channels``."""
    rule = _lookup(head, 'heads')
    if rule is not None:
        return rule(head)
    dim = getattr(head, 'hidden_dim', None) or getattr(
        head, 'in_channels', None)
    if dim is None:
        raise TypeError(f'cannot tell the feature width of head '
                        f'{type(head).__name__} (no in_channels); register '
                        'it in gplq_mm.quant.hosts')
    return dim


# -- the hosts ----------------------------------------------------------------
def _mmpretrain_divides(fn: Callable) -> bool:
    """mmpretrain's Python fallback divides by its scale; torch's SDPA
    multiplies."""
    host = sys.modules.get('mmpretrain.models.utils.attention')
    pyimpl = getattr(host, 'scaled_dot_product_attention_pyimpl', None)
    return getattr(fn, 'func', fn) is pyimpl and pyimpl is not None


_SOFTMAX = ModuleSeam('softmax', after=True)


def _window_tokens(attn: nn.Module) -> int:
    """A window attention: its window's positions."""
    ws = attn.window_size
    return ws[0] * ws[1] if isinstance(ws, (tuple, list)) else ws * ws
_SWIN_PAIRS = (('norm1', 'attn.w_msa.qkv'), ('norm2', 'ffn.layers.0.0'))


def _merging_pairs(merge: nn.Module) -> LNLinear:
    """Swin's PatchMerging: ``norm`` then ``reduction`` (pre-norm only)."""
    if getattr(merge, 'norm', None) is None or getattr(
            merge, 'use_post_norm', False):
        return ()
    return (('norm', 'reduction'), )

def _relu_chain(prefix: str, layers) -> LNLinear:
    """``(producer, next conv)`` along mmcv ConvModules that end in ReLU
    (the producer is the norm when there is one, else the conv)."""
    pairs = []
    for i, mod in enumerate(list(layers)[:-1]):
        if getattr(mod, 'with_activation', False) and isinstance(
                mod.activate, nn.ReLU):
            src = mod.norm_name if mod.with_norm else 'conv'
            pairs.append((f'{prefix}.{i}.{src}', f'{prefix}.{i + 1}.conv'))
    return tuple(pairs)


def _mask_head_pairs(head: nn.Module) -> LNLinear:
    """FCNMaskHead: conv i -> ReLU -> conv i+1; deconv -> ReLU -> logits."""
    pairs = _relu_chain('convs', head.convs)
    if getattr(head, 'upsample_method', None) == 'deconv':
        pairs += (('upsample', 'conv_logits'), )
    return pairs


def _convfc_head_pairs(head: nn.Module) -> LNLinear:
    """ConvFCBBoxHead: shared conv i -> ReLU -> conv i+1, and
    ``x = relu(fc(x))`` along the shared fcs (the flatten between the
    two, and the two branches after them, do not fold)."""
    fcs = tuple((f'shared_fcs.{i}', f'shared_fcs.{i + 1}')
                for i in range(len(head.shared_fcs) - 1))
    return _relu_chain('shared_convs', head.shared_convs) + fcs


def _swin_fpn_pairs(det: nn.Module) -> LNLinear:
    """mmdet's Swin + FPN: the backbone's output LayerNorm ``norm{i}`` ->
    the FPN's lateral conv of that level (an input the FPN also feeds to an
    extra conv is not folded)."""
    neck, backbone = getattr(det, 'neck', None), det.backbone
    if type(neck).__qualname__ != 'FPN' or not hasattr(backbone,
                                                       'out_indices'):
        return ()
    pairs = []
    last = len(neck.lateral_convs) - 1 + neck.start_level
    for j in range(len(neck.lateral_convs)):
        i = j + neck.start_level
        norm = getattr(backbone, f'norm{i}', None)
        if not isinstance(norm, nn.LayerNorm) or (
                i == last and neck.add_extra_convs == 'on_input'):
            continue
        pairs.append((f'backbone.norm{i}', f'neck.lateral_convs.{j}.conv'))
    return tuple(pairs)


register_host(HostSpec(
    name='mmpretrain / mmdet whole models',
    models={'mmpretrain.models.classifiers.image.ImageClassifier':
            'classifier',
            'mmdet.models.detectors.two_stage.TwoStageDetector':
            'two-stage detector'},
    folds={'mmdet.models.detectors.two_stage.TwoStageDetector':
           _swin_fpn_pairs,
           'mmdet.models.roi_heads.mask_heads.fcn_mask_head.FCNMaskHead':
           _mask_head_pairs,
           'mmdet.models.roi_heads.bbox_heads.convfc_bbox_head.'
           'ConvFCBBoxHead': _convfc_head_pairs}))

register_host(HostSpec(
    name='mmpretrain VisionTransformer / DeiT',
    attention={
        'mmpretrain.models.utils.attention.MultiheadAttention':
        SDPASeam('scaled_dot_product_attention', _mmpretrain_divides,
                 # v_shortcut adds v to the output: keep v quantized at the
                 # qkv output then, as the host sees it.
                 fuse_qkv=lambda attn: not attn.v_shortcut),
    },
    blocks={
        'mmpretrain.models.backbones.vision_transformer.'
        'TransformerEncoderLayer': (('ln1', 'attn.qkv'),
                                    ('ln2', 'ffn.layers.0.0')),
    },
    heads={
        # pre_logits returns the class and the distillation token.
        'mmpretrain.models.heads.deit_head.DeiTClsHead':
        lambda head: 2 * (head.hidden_dim or head.in_channels),
    },
    tokens={
        # patches at the configured img_size, plus class / distillation
        'mmpretrain.models.backbones.vision_transformer.VisionTransformer':
        lambda vit: vit.patch_resolution[0] * vit.patch_resolution[1] +
        vit.num_extra_tokens,
    }))

register_host(HostSpec(
    name='mmpretrain SwinTransformer',
    attention={'mmpretrain.models.utils.attention.WindowMSA': _SOFTMAX},
    wrappers=('mmpretrain.models.utils.attention.ShiftWindowMSA', ),
    blocks={'mmpretrain.models.backbones.swin_transformer.SwinBlock':
            _SWIN_PAIRS},
    tokens={'mmpretrain.models.utils.attention.WindowMSA': _window_tokens},
    folds={'mmpretrain.models.utils.embed.PatchMerging': _merging_pairs,
           # mmpretrain's SwinTransformer builds mmcv's PatchMerging.
           'mmcv.cnn.bricks.transformer.PatchMerging': _merging_pairs}))

register_host(HostSpec(
    name='mmdet SwinTransformer',
    attention={'mmdet.models.backbones.swin.WindowMSA': _SOFTMAX},
    wrappers=('mmdet.models.backbones.swin.ShiftWindowMSA', ),
    blocks={'mmdet.models.backbones.swin.SwinBlock': _SWIN_PAIRS},
    tokens={'mmdet.models.backbones.swin.WindowMSA': _window_tokens},
    folds={'mmdet.models.layers.transformer.utils.PatchMerging':
           _merging_pairs}))

register_host(HostSpec(
    name='timm VisionTransformer',
    attention={
        # attn_drop follows the softmax of the explicit path; fused_attn
        # would skip it.
        'timm.layers.attention.Attention':
        ModuleSeam('attn_drop', after=False, explicit_path='fused_attn',
                   require_identity=('q_norm', 'k_norm')),
    },
    blocks={'timm.models.vision_transformer.Block': (('norm1', 'attn.qkv'),
                                                     ('norm2', 'mlp.fc1'))},
    tokens={'timm.models.vision_transformer.VisionTransformer':
            lambda vit: vit.patch_embed.num_patches + vit.num_prefix_tokens}))

register_host(HostSpec(
    name='timm SwinTransformer',
    attention={'timm.models.swin_transformer.WindowAttention': _SOFTMAX},
    blocks={'timm.models.swin_transformer.SwinTransformerBlock':
            (('norm1', 'attn.qkv'), ('norm2', 'mlp.fc1'))},
    tokens={'timm.models.swin_transformer.WindowAttention': _window_tokens},
    folds={'timm.models.swin_transformer.PatchMerging': _merging_pairs}))
