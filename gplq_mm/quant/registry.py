"""The host registry's machinery: :class:`HostSpec`, :func:`register_host`
and the lookups; the entries themselves are in :mod:`gplq_mm.quant.hosts`
(import the lookups from there, so the entries are registered).

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
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch.nn as nn

from .attention import ModuleSeam, SDPASeam

__all__ = ['HostSpec', 'register_host', 'HOSTS', 'KINDS', 'class_key',
           'is_a', 'find_attention_seam', 'is_block', 'block_width',
           'ln_linear_pairs', 'fold_pairs', 'sibling_groups',
           'requantized_outputs', 'attention_tokens', 'head_feature_dim',
           'model_task', 'input_size']

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
        input_size (dict): Backbone class -> ``backbone -> (H, W)``, the
            image size it is configured for (benchmarks build inputs of
            it).
        siblings (dict): Module class -> ``module -> groups`` (tuples of
            submodule names) of Linear / Conv2d layers that read one ReLU
            output and nothing else reads: in deployable mode each group
            shares one unsigned input quantizer, so a single QuantizeLinear
            takes the producer's output and onnxruntime can run the
            producing conv as QLinearConv (mmdet's RPN conv, read by its
            two 1 x 1 heads).
        requantized_outputs (dict): Module class -> ``module ->
            producers`` (submodule names): Conv2d layers whose output a
            quantized conv reads beside float code (mmdet's FPN output
            convs: the RPN conv and RoIAlign read them), so no single
            QuantizeLinear follows them: in deployable mode each quantizes
            its output per tensor at ``QuantConfig.output_bits`` (8), and
            onnxruntime runs it as QLinearConv; the float readers see the
            8-bit tensor.
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
    input_size: Dict[str, Callable[[nn.Module], Tuple[int, int]]] = \
        dataclasses.field(default_factory=dict)
    siblings: Dict[str, Callable[[nn.Module], Tuple[Tuple[str, ...], ...]]] \
        = dataclasses.field(default_factory=dict)
    requantized_outputs: Dict[str, Callable[[nn.Module], Tuple[str, ...]]] \
        = dataclasses.field(default_factory=dict)


HOSTS: List[HostSpec] = []
# the HostSpec tables keyed by class
KINDS = ('attention', 'wrappers', 'blocks', 'heads', 'models', 'folds',
         'tokens', 'input_size', 'siblings', 'requantized_outputs')


def class_key(cls: type) -> str:
    """A class's registry key, ``'<module>.<qualname>'``."""
    return f'{cls.__module__}.{cls.__qualname__}'


def is_a(mod: nn.Module, key: str) -> bool:
    """Whether ``mod``'s class or a base is the class named ``key``
    (``'<module>.<qualname>'``), without importing its host."""
    return any(class_key(cls) == key for cls in type(mod).__mro__)


def register_host(spec: HostSpec) -> HostSpec:
    """Add ``spec``; a class already claimed by another host is an error."""
    for other in HOSTS:
        for kind in KINDS[:1] + KINDS[2:]:
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
        key = class_key(cls)
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
            out.append((_in(name, ln), _in(name, lin)))
    return out


def _in(name: str, sub: str) -> str:
    """Submodule ``sub`` of the module ``name``, named from the model."""
    return f'{name}.{sub}' if name else sub


def _rules(model: nn.Module, kind: str):
    """``(name, what its rule returns)`` of each module of ``model`` with
    a ``kind`` rule."""
    for name, mod in model.named_modules():
        rule = _lookup(mod, kind)
        if rule is not None:
            yield name, rule(mod)


def sibling_groups(model: nn.Module) -> List[Tuple[str, ...]]:
    """The ``siblings`` groups of ``model`` (names relative to it), see
    ``HostSpec.siblings``."""
    return [tuple(_in(name, n) for n in group)
            for name, groups in _rules(model, 'siblings') for group in groups]


def requantized_outputs(model: nn.Module) -> List[str]:
    """The ``requantized_outputs`` producers of ``model`` (names relative
    to it), see ``HostSpec.requantized_outputs``."""
    return [_in(name, n)
            for name, convs in _rules(model, 'requantized_outputs')
            for n in convs]


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


def input_size(backbone: nn.Module) -> Tuple[int, int]:
    """The image size ``(H, W)`` ``backbone`` is configured for."""
    rule = _lookup(backbone, 'input_size')
    if rule is None:
        raise TypeError(f'no host rule gives the input size of '
                        f'{type(backbone).__name__}; register one '
                        '(HostSpec.input_size)')
    return tuple(int(v) for v in rule(backbone))


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
