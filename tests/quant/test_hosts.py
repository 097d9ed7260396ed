import pytest
import torch
import torch.nn as nn

from gplq_mm.quant import convert, hosts, revert
from gplq_mm.quant.attention import ModuleSeam, QuantSDPA, QuantSeam
from gplq_mm.quant.hosts import HostSpec, register_host
from tests.backbones import BACKBONES, build, quant_cfg

# (blocks, attention modules) of each tiny backbone
EXPECTED = dict(mmpretrain_vit=2, mmpretrain_deit=2, mmpretrain_swin=4,
                mmdet_swin=4, timm_vit=2, timm_swin=4)


@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_each_host_entry_finds_blocks_pairs_and_attention(name):
    model, _ = build(name)
    blocks = [m for m in model.modules() if hosts.is_block(m)]
    assert len(blocks) == EXPECTED[name]
    for block in blocks:
        pairs = hosts.ln_linear_pairs(block)
        assert len(pairs) == 2
        for ln, lin in pairs:
            assert isinstance(ln, nn.LayerNorm) and isinstance(lin, nn.Linear)
            assert lin.in_features == ln.normalized_shape[-1]
        assert hosts.block_width(block) == pairs[0][0].normalized_shape[-1]
    seams = [hosts.find_attention_seam(m) for m in model.modules()]
    assert sum(s is not None for s in seams) == EXPECTED[name]
    convert(model, quant_cfg(['*']))
    adapted = [m for m in model.modules()
               if isinstance(m, (QuantSDPA, QuantSeam))]
    assert len(adapted) == EXPECTED[name]


def test_head_feature_widths():
    from mmpretrain.models.heads import (
        DeiTClsHead,
        LinearClsHead,
        VisionTransformerClsHead,
    )
    assert hosts.head_feature_dim(LinearClsHead(10, 24)) == 24
    assert hosts.head_feature_dim(
        VisionTransformerClsHead(10, 24, hidden_dim=12)) == 12
    assert hosts.head_feature_dim(DeiTClsHead(10, 24)) == 48
    with pytest.raises(TypeError, match='feature width of head Identity'):
        hosts.head_feature_dim(nn.Identity())


class MyAttention(nn.Module):
    """An attention the registry does not know: explicit softmax module."""

    def __init__(self, dim=8, num_heads=2):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x):  # (B, N, C)
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(
            2, 0, 3, 1, 4)
        attn = self.softmax(q @ k.transpose(-2, -1))
        return (attn @ v).transpose(1, 2).reshape(b, n, c)


def test_unregistered_attention_is_named():
    model = nn.Sequential(nn.Linear(8, 8), MyAttention())
    with pytest.raises(ValueError,
                       match=r'test_hosts.MyAttention has no quantization'):
        convert(model)
    convert(model, dict(exclude=['1']))  # excluded: fine
    assert type(model[1].qkv) is nn.Linear
    revert(model)
    assert type(model[0]) is nn.Linear


def test_adding_a_host_is_one_entry(monkeypatch):
    monkeypatch.setattr(hosts, 'HOSTS', list(hosts.HOSTS))
    key = f'{MyAttention.__module__}.{MyAttention.__qualname__}'
    register_host(HostSpec('my model', attention={
        key: ModuleSeam('softmax', after=True)}))
    model = nn.Sequential(MyAttention())
    x = torch.randn(2, 5, 8)
    ref = model(x)
    convert(model)
    names = [n for n, _ in model.named_modules()]
    assert '0.softmax.p_quantizer' in names and '0.qkv.q_quantizer' in names
    assert torch.equal(model(x), ref)  # quantizers off
    revert(model)
    assert type(model[0].softmax) is nn.Softmax
    with pytest.raises(ValueError, match='already registered by my model'):
        register_host(HostSpec('again', attention={key: None}))


def test_whole_models_name_their_task():
    from mmpretrain.models import ImageClassifier

    from tests.helpers import ARCH
    arch = dict(ARCH)
    arch.pop('type')
    assert hosts.model_task(ImageClassifier(**arch)) == 'classifier'
    assert hosts.model_task(nn.Linear(2, 2)) is None


def test_every_registry_key_is_an_importable_host_class():
    """Each class a host entry names (``'<module>.<qualname>'``) imports
    and is that class: an upstream rename or move fails here, loudly,
    instead of silently leaving the class unquantized."""
    import importlib

    from gplq_mm.quant.hosts import FPN, HOSTS, KINDS, class_key
    keys = {k for spec in HOSTS for kind in KINDS
            for k in getattr(spec, kind)}
    keys.add(FPN)  # named by the Swin -> FPN fold
    assert len(keys) > 20
    for key in sorted(keys):
        parts = key.split('.')
        for i in range(len(parts) - 1, 0, -1):  # longest importable module
            try:
                obj = importlib.import_module('.'.join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                obj = getattr(obj, attr, None)
            break
        assert isinstance(obj, type), f'{key} does not resolve to a class'
        assert class_key(obj) == key, (key, class_key(obj))
