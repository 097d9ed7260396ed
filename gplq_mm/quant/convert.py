"""convert / revert: a float model to its quantized form and back."""
from fnmatch import fnmatch
from typing import Iterator, Sequence, Union

import torch.nn as nn

from .config import QuantConfig
from .hosts import (
    attention_tokens,
    find_attention_seam,
    fold_pairs,
    is_block,
    requantized_outputs,
    sibling_groups,
)
from .layers import (
    QuantConv2d,
    QuantConvTranspose2d,
    QuantLinear,
    act_quantizer,
    is_quant_layer,
)
from .quantizer import FakeQuantizer
from .qwt import attach_compensator, detach_compensator

__all__ = ['convert', 'revert', 'qwt_blocks']


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

    Linear / Conv2d / ConvTranspose2d (one group) in scope become
    :class:`QuantLinear` / :class:`QuantConv2d` /
    :class:`QuantConvTranspose2d` sharing the float Parameters; supported
    attention classes get q / k / v / softmax-output quantizers;
    transformer blocks get QwT compensators (``config.qwt``). In
    deployable mode the layers of a ``HostSpec.siblings`` group share one
    input quantizer (one module, registered under each), and the convs of
    ``HostSpec.requantized_outputs`` quantize their outputs at
    ``config.output_bits``. Every
    quantizer starts disabled and uninitialized, so the converted model
    computes the float output.

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
    pairs = fold_pairs(model)
    folded = {lin for _, lin in pairs}
    # a producer other than a LayerNorm reaches its layer through a ReLU
    # (HostSpec.folds)
    after_relu = {lin for src, lin in pairs if not isinstance(
        model.get_submodule(src), nn.LayerNorm)}
    # layers that read one ReLU output together (HostSpec.siblings)
    groups = sibling_groups(model) if cfg.deployable else []
    after_relu.update(n for group in groups for n in group)
    for name, mod in list(model.named_modules()):
        if (_in_scope(name, cfg) and not is_quant_layer(mod)
                and not isinstance(mod, FakeQuantizer)):
            seam = find_attention_seam(mod)
            if seam is not None:  # a seam quantizes the host's projection
                cfgs = cfg.quantizer_cfgs(
                    folds=f'{name}.{seam.projection}' in folded)
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
            cfgs = cfg.quantizer_cfgs(patch_embed=pe, folds=full in folded,
                                      after_relu=full in after_relu)
            if isinstance(child, nn.Linear):
                new = QuantLinear.from_float(child, cfgs['act'],
                                             cfgs['weight'])
            elif isinstance(child, nn.Conv2d):
                new = QuantConv2d.from_float(child, cfgs['act'],
                                             cfgs['weight'])
            elif isinstance(child, nn.ConvTranspose2d) and child.groups == 1:
                new = QuantConvTranspose2d.from_float(child, cfgs['act'],
                                                      cfgs['weight'])
            else:
                continue
            setattr(parent, cname, new)
    if cfg.deployable:
        _deployable_rules(model, cfg, groups)
    if cfg.qwt:
        for _, block in qwt_blocks(model, cfg):
            attach_compensator(block)
    return model


def _deployable_rules(model: nn.Module, cfg: QuantConfig, groups) -> None:
    """Each sibling group (``HostSpec.siblings``) takes its first layer's
    input quantizer; each ``HostSpec.requantized_outputs`` conv quantizes
    its output per tensor at ``cfg.output_bits``."""
    for group in groups:
        layers = [model.get_submodule(n) for n in group]
        if all(is_quant_layer(m) for m in layers):
            for m in layers[1:]:
                m.input_quantizer = layers[0].input_quantizer
    out_cfg = dict(cfg.quantizer_cfgs()['act'], bits=cfg.output_bits,
                   granularity='tensor', signed=True)
    for name in requantized_outputs(model):
        conv = model.get_submodule(name)
        if isinstance(conv, QuantConv2d) and conv.output_quantizer is None:
            conv.output_quantizer = act_quantizer(
                out_cfg, conv.out_channels, 1, conv.weight.device)


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
