import copy

import pytest
import torch

from gplq_mm.quant import (
    calibration,
    convert,
    fused,
    iter_quantizers,
    set_quant_state,
)
from gplq_mm.quant.attention import QuantSDPA, QuantSeam
from tests.backbones import (
    BACKBONES,
    build,
    flat,
    inputs,
    quant_cfg,
    quantized,
)

NAMES = sorted(BACKBONES)


@pytest.mark.parametrize('name', NAMES)
def test_explicit_attention_path_matches_host(name):
    """While quantizers observe, every adapter runs its explicit attention
    path (QuantSDPA's own math, timm's explicit path) with identity
    quantizers: it matches the host's float output."""
    model, blocks = build(name)
    q = convert(copy.deepcopy(model), quant_cfg(blocks))
    x = inputs()
    with calibration(q):
        out = flat(q(x))
    assert torch.allclose(out, flat(model(x)), atol=1e-5, rtol=1e-4)


def test_timm_fused_path_off_only_while_quantizing_and_revert_restores():
    """timm's fused SDPA path skips the softmax seam: the converted
    attention takes the explicit path while its quantizer is active and
    the host's own choice otherwise; revert removes the hook and leaves
    the host's flag."""
    from gplq_mm.quant import revert
    model, blocks = build('timm_vit')
    attn = model.blocks[0].attn
    attn.fused_attn = True
    convert(model, quant_cfg(blocks))
    assert isinstance(attn.attn_drop, QuantSeam)
    assert attn.attn_drop.host_flags == {'fused_attn': True}
    x = inputs()
    model(x)  # quantizers off: the host's fused path
    assert attn.fused_attn is True
    with calibration(model):  # observing: the explicit path
        model(x)
        assert attn.fused_attn is False
    model(x)
    assert attn.fused_attn is True
    revert(model)
    assert attn.fused_attn is True
    assert type(attn.attn_drop) is torch.nn.Dropout
    assert not attn._forward_pre_hooks


def test_full_size_timm_vit_with_quantizers_off_is_the_host_exactly():
    """At full size (vit_small_patch16_224, random weights, the fused SDPA
    path as timm builds it), a converted model with its quantizers off
    computes exactly what the host computes: bit for bit."""
    import timm
    torch.manual_seed(0)
    host = timm.create_model('vit_small_patch16_224', pretrained=False)
    host.eval()
    assert host.blocks[0].attn.fused_attn
    q = convert(copy.deepcopy(host), dict(include=['blocks',
                                                   'patch_embed']))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(
        1))
    with torch.no_grad():
        assert torch.equal(q(x), host(x))


def test_qk_norm_is_refused():
    import timm
    model = timm.create_model(
        'vit_tiny_patch16_224', pretrained=False, img_size=32, patch_size=8,
        embed_dim=32, depth=1, num_heads=2, qk_norm=True)
    with pytest.raises(ValueError, match='q_norm=LayerNorm'):
        convert(model, dict(include=['blocks']))


@pytest.mark.parametrize('name', ['mmpretrain_vit', 'mmpretrain_deit'])
def test_fused_attention_path_matches_composed(name, monkeypatch):
    """mmpretrain attention in Stage 1 runs as one fused function (q, k, v
    quantized inside it, nothing N x N saved); outputs and every gradient,
    LSQ steps included, equal the composed path."""
    import gplq_mm.quant.attention as attention
    model, q, _ = quantized(name)
    set_quant_state(q, weight=False, act=True)
    calls = []
    monkeypatch.setattr(attention, 'lsq_attention',
                        lambda *a: calls.append(1) or fused.lsq_attention(*a))
    sdpa = [m for m in q.modules() if isinstance(m, QuantSDPA)]
    assert sdpa and all(len(m.operands) == 3 for m in sdpa)
    x = inputs()
    results = []
    for use_fused in (True, False):
        if not use_fused:
            monkeypatch.setattr(QuantSDPA, '_fusable', lambda *a: False)
        q.zero_grad()
        out = flat(q(x))
        (out * torch.linspace(-1, 1, out.numel())).sum().backward()
        results.append([out.detach()] + [p.grad for p in q.parameters()
                                         if p.requires_grad])
    assert len(calls) == len(sdpa)  # one per block, fused pass only
    for a, r in zip(*results):
        assert (a is None) == (r is None)
        assert a is None or torch.allclose(a, r, atol=1e-5, rtol=1e-4)
    steps = [m.step.grad for n, m in iter_quantizers(q)
             if n.endswith(('q_quantizer', 'p_quantizer'))]
    assert steps and all(g is not None and g.abs().sum() > 0 for g in steps)


def test_v_shortcut_keeps_v_quantized_at_the_qkv_output():
    from mmpretrain.models.utils.attention import MultiheadAttention
    attn = MultiheadAttention(embed_dims=8, num_heads=2, v_shortcut=True,
                              input_dims=8)
    wrapper = torch.nn.Sequential(attn)
    convert(wrapper)
    assert attn.scaled_dot_product_attention.operands == ()
    assert attn.qkv.deferred is False
