"""Everything gplq_mm knows about the host models: the registry's entries
(its machinery, :class:`HostSpec` and the lookups, is
:mod:`gplq_mm.quant.registry`; import the lookups from here, which
registers the entries).

A :class:`HostSpec` says, for one host model family, how its attention is
quantized (the seam, see :mod:`gplq_mm.quant.attention`), which attention
classes only wrap an adapted one, what a transformer block is (QwT
compensates each), which LayerNorm feeds which Linear inside a block (RepQ
reparameterization, the block width), which producer feeds which layer
alone (deployable mode's folds), which layers share a quantizer in
deployable mode (siblings reading one ReLU output) and which convs
requantize their output (read by a quantized conv beside float code), how
wide the features its classification heads consume are, and what input size
a backbone is configured for.
Classes are named by ``'<module>.<qualname>'``, so nothing here imports a
host, and matched over the MRO, so subclasses inherit their base's entry.
"""
import sys
from typing import Callable, Tuple

import torch.nn as nn

from .attention import ModuleSeam, SDPASeam
from .registry import (
    HOSTS,
    KINDS,
    HostSpec,
    LNLinear,
    attention_tokens,
    block_width,
    class_key,
    find_attention_seam,
    fold_pairs,
    head_feature_dim,
    input_size,
    is_a,
    is_block,
    ln_linear_pairs,
    model_task,
    register_host,
    requantized_outputs,
    sibling_groups,
)

__all__ = ['HostSpec', 'register_host', 'HOSTS', 'KINDS', 'class_key',
           'is_a', 'find_attention_seam', 'is_block', 'block_width',
           'ln_linear_pairs', 'fold_pairs', 'sibling_groups',
           'requantized_outputs', 'attention_tokens',
           'head_feature_dim', 'model_task', 'input_size']


def _mmpretrain_divides(fn: Callable) -> bool:
    """mmpretrain's Python fallback divides by its scale; torch's SDPA
    multiplies."""
    host = sys.modules.get('mmpretrain.models.utils.attention')
    pyimpl = getattr(host, 'scaled_dot_product_attention_pyimpl', None)
    return getattr(fn, 'func', fn) is pyimpl and pyimpl is not None


_SOFTMAX = ModuleSeam('softmax', after=True)
FPN = 'mmdet.models.necks.fpn.FPN'  # the neck the Swin -> FPN fold knows


def _patch_grid_size(backbone: nn.Module) -> Tuple[int, int]:
    """mmpretrain ViT / Swin: the patch grid at the configured ``img_size``
    times the patch embedding's stride."""
    return tuple(r * s for r, s in zip(backbone.patch_resolution,
                                       backbone.patch_embed.projection.stride))


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
    """FCNMaskHead: conv i -> ReLU -> conv i+1 -> ... -> ReLU -> deconv ->
    ReLU -> logits."""
    pairs = _relu_chain('convs', head.convs)
    if getattr(head, 'upsample_method', None) == 'deconv':
        last = head.convs[-1] if len(head.convs) else None
        if getattr(last, 'with_activation', False) and isinstance(
                last.activate, nn.ReLU):
            src = last.norm_name if last.with_norm else 'conv'
            pairs += ((f'convs.{len(head.convs) - 1}.{src}', 'upsample'), )
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
    if not is_a(neck, FPN) or not hasattr(
            backbone, 'out_indices'):
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


def _rpn_siblings(head: nn.Module) -> Tuple[Tuple[str, ...], ...]:
    """mmdet's RPNHead: ``relu(rpn_conv(x))`` feeds ``rpn_cls`` and
    ``rpn_reg`` (``forward_single``)."""
    return (('rpn_cls', 'rpn_reg'), )


def _fpn_outputs(det: nn.Module) -> Tuple[str, ...]:
    """mmdet's FPN under an RPN: every output conv (a ConvModule with
    neither norm nor activation) feeds the RPN conv and RoIAlign."""
    neck, rpn = getattr(det, 'neck', None), getattr(det, 'rpn_head', None)
    if not is_a(neck, FPN) or not is_a(
            rpn, 'mmdet.models.dense_heads.rpn_head.RPNHead') or any(
                m.with_norm or m.with_activation for m in neck.fpn_convs):
        return ()
    return tuple(f'neck.fpn_convs.{i}.conv'
                 for i in range(len(neck.fpn_convs)))


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
           'ConvFCBBoxHead': _convfc_head_pairs},
    siblings={'mmdet.models.dense_heads.rpn_head.RPNHead': _rpn_siblings},
    requantized_outputs={
        'mmdet.models.detectors.two_stage.TwoStageDetector': _fpn_outputs}))

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
    },
    input_size={
        'mmpretrain.models.backbones.vision_transformer.VisionTransformer':
        _patch_grid_size}))

register_host(HostSpec(
    name='mmpretrain SwinTransformer',
    attention={'mmpretrain.models.utils.attention.WindowMSA': _SOFTMAX},
    wrappers=('mmpretrain.models.utils.attention.ShiftWindowMSA', ),
    blocks={'mmpretrain.models.backbones.swin_transformer.SwinBlock':
            _SWIN_PAIRS},
    tokens={'mmpretrain.models.utils.attention.WindowMSA': _window_tokens},
    input_size={
        'mmpretrain.models.backbones.swin_transformer.SwinTransformer':
        _patch_grid_size},
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
