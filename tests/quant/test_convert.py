import copy

import pytest
import torch
import torch.nn as nn

from gplq_mm.quant import (FakeQuantizer, QuantConfig, QuantLinear,
                           calibration, convert, iter_quantizers,
                           quantize_weights, revert, set_quant_state)
from gplq_mm.quant.layers import QuantConv2d, QuantQKV
from tests.backbones import BACKBONES, build, flat, inputs

NAMES = sorted(BACKBONES)


def _cfg(blocks):
    return dict(include=blocks + ['patch_embed'])


def _quantized(name):
    """A converted backbone with calibrated activations and weights."""
    model, blocks = build(name)
    q = convert(copy.deepcopy(model), _cfg(blocks))
    with calibration(q):
        q(inputs(seed=2, n=4))
    quantize_weights(q)
    return model, q, blocks


@pytest.mark.parametrize('name', NAMES)
def test_quantizers_off_is_float_exactly(name):
    model, q, _ = _quantized(name)
    x = inputs()
    ref = flat(model(x))
    set_quant_state(q, weight=False, act=False)
    assert torch.equal(flat(q(x)), ref)
    set_quant_state(q, weight=True, act=True)
    assert not torch.equal(flat(q(x)), ref)


@pytest.mark.parametrize('name', NAMES)
def test_every_site_is_quantized(name):
    model, blocks = build(name)
    q = convert(model, _cfg(blocks))
    kinds = {type(m) for m in q.modules()}
    assert {QuantLinear, QuantConv2d, QuantQKV} <= kinds
    names = [n for n, _ in iter_quantizers(q)]
    for op in ('q_quantizer', 'k_quantizer', 'v_quantizer', 'p_quantizer'):
        assert any(n.endswith(op) for n in names), op
    # No float Linear left inside the blocks.
    for n, m in q.named_modules():
        if any(n.startswith(b + '.') for b in blocks):
            assert type(m) is not nn.Linear, n
    pe = [m for n, m in q.named_modules()
          if isinstance(m, QuantConv2d) and 'patch_embed' in n]
    assert pe and pe[0].input_quantizer.bits == 8


@pytest.mark.parametrize('name', NAMES)
def test_convert_twice_equals_once(name):
    model, blocks = build(name)
    once = convert(copy.deepcopy(model), _cfg(blocks))
    twice = convert(convert(copy.deepcopy(model), _cfg(blocks)), _cfg(blocks))
    assert list(once.state_dict()) == list(twice.state_dict())
    assert [type(m) for m in once.modules()] == \
        [type(m) for m in twice.modules()]


@pytest.mark.parametrize('name', NAMES)
def test_revert_restores_float(name):
    model, q, _ = _quantized(name)
    set_quant_state(q, weight=True, act=True)
    r = revert(q)
    assert [type(m) for m in r.modules()] == [type(m) for m in model.modules()]
    assert list(r.state_dict()) == list(model.state_dict())
    x = inputs()
    assert torch.equal(flat(r(x)), flat(model(x)))


@pytest.mark.parametrize('name', NAMES)
def test_float_checkpoint_loads_strictly_and_state_round_trips(name):
    model, q, blocks = _quantized(name)
    set_quant_state(q, weight=True, act=True)
    x = inputs()
    # float -> converted, strict
    fresh = convert(build(name, seed=5)[0], _cfg(blocks))
    fresh.load_state_dict(model.state_dict(), strict=True)
    set_quant_state(fresh, weight=False, act=False)
    assert torch.equal(flat(fresh(x)), flat(model(x)))
    # converted -> converted, strict, quantizer state included
    fresh.load_state_dict(q.state_dict(), strict=True)
    set_quant_state(fresh, weight=True, act=True)
    assert torch.equal(flat(fresh(x)), flat(q(x)))


@pytest.mark.parametrize('name', NAMES)
def test_steps_receive_gradients(name):
    _, q, _ = _quantized(name)
    set_quant_state(q, weight=False, act=True)
    q.train()
    flat(q(inputs())).pow(2).sum().backward()
    for n, m in iter_quantizers(q, 'act'):
        assert m.step.grad is not None and m.step.grad.abs().sum() > 0, n
    for n, m in iter_quantizers(q, 'weight'):
        assert m.step.grad is None, n  # weight steps are fixed by default


def test_uninitialized_enabled_quantizer_raises():
    lin = convert(nn.Sequential(nn.Linear(4, 4)))
    set_quant_state(lin, act=True)
    with pytest.raises(RuntimeError, match='not initialized'):
        lin(torch.randn(2, 4))


def test_quantizer_state_dict_round_trip():
    a = FakeQuantizer(bits=3, granularity='channel', num_channels=5)
    a.set_step(torch.arange(1., 6.))
    b = FakeQuantizer(bits=3, granularity='channel', num_channels=5)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.step, a.step) and bool(b.initialized)
    c = FakeQuantizer(bits=3, granularity='channel', num_channels=5)
    c.load_state_dict({}, strict=True)  # a float checkpoint: no keys
    assert not bool(c.initialized)


@pytest.mark.parametrize('field,value,match', [
    ('w_bits', 9, r'w_bits=9 .*2\.\.8'),
    ('a_bits', 1, r'a_bits=1 .*2\.\.8'),
    ('attn_bits', 2.5, r'attn_bits=2\.5'),
    ('act_granularity', 'row', r"act_granularity='row'.*'channel'"),
    ('attn_granularity', 'token', r"attn_granularity='token'.*'head'"),
    ('bogus', 1, r"no field\(s\) \['bogus'\]"),
])
def test_bad_config_errors(field, value, match):
    with pytest.raises(ValueError, match=match):
        QuantConfig.from_any({field: value})


def test_quantizer_bad_args():
    with pytest.raises(ValueError, match=r'bits=1 .*2\.\.8'):
        FakeQuantizer(bits=1)
    with pytest.raises(ValueError, match="granularity='row'"):
        FakeQuantizer(granularity='row')


def test_include_matching_nothing_errors():
    with pytest.raises(ValueError, match="'nothing.*' matches no module"):
        convert(nn.Sequential(nn.Linear(2, 2)), dict(include=['nothing.*']))


class MyAttention(nn.Module):

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(4, 12)

    def forward(self, x):
        return self.qkv(x)


def test_unadapted_attention_is_named():
    model = nn.Sequential(nn.Linear(4, 4), MyAttention())
    with pytest.raises(ValueError, match='test_convert.MyAttention has no'):
        convert(model)
    convert(model, dict(exclude=['1']))  # excluded: fine
    assert isinstance(model[0], QuantLinear)
    assert type(model[1].qkv) is nn.Linear


@pytest.mark.parametrize('name', NAMES)
def test_explicit_attention_path_matches_host(name):
    """While quantizers observe, every adapter runs its explicit attention
    path (timm's fused path off, QuantSDPA's own math) with identity
    quantizers: it must match the host's float output."""
    model, blocks = build(name)
    q = convert(copy.deepcopy(model), _cfg(blocks))
    x = inputs()
    with calibration(q):
        for m in q.modules():
            if '_gplq_fused_attn' in m.__dict__:
                assert m.fused_attn is False
        out = flat(q(x))
    assert torch.allclose(out, flat(model(x)), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('name', NAMES)
def test_repq_reparameterization_keeps_float_output(name):
    from gplq_mm.quant import qwt_blocks
    from gplq_mm.quant.repq import ln_linear_pairs, reparameterize
    model, blocks = build(name)
    q = convert(copy.deepcopy(model), _cfg(blocks))
    x = inputs(n=4)
    pairs = ln_linear_pairs(qwt_blocks(q))
    assert len(pairs) == 2 * len(qwt_blocks(q))
    ln0 = pairs[0][0].weight.clone()
    assert reparameterize(pairs, lambda: q(x)) == len(pairs)
    assert not torch.equal(pairs[0][0].weight, ln0)
    assert torch.allclose(flat(q(x)), flat(model(x)), atol=1e-4, rtol=1e-4)
    # every reparameterized channel now spans the same symmetric range
    seen = []
    h = pairs[0][0].register_forward_hook(lambda m, a, o: seen.append(o))
    q(x)
    h.remove()
    y = seen[0].reshape(-1, seen[0].shape[-1])
    half = (y.amax(0) - y.amin(0)) / 2
    centre = (y.amax(0) + y.amin(0)) / 2
    assert torch.allclose(half, half.mean().expand_as(half), rtol=1e-3)
    assert centre.abs().max() < 1e-3 * half.mean()


@pytest.mark.parametrize('name', ['mmpretrain_vit', 'mmpretrain_deit'])
def test_fused_attention_path_matches_composed(name, monkeypatch):
    """mmpretrain attention in Stage 1 runs as one fused function (q, k, v
    quantized inside it, nothing N x N saved); outputs and every gradient,
    LSQ steps included, equal the composed path."""
    from gplq_mm.quant import functional as QF
    from gplq_mm.quant.attention import QuantSDPA
    model, q, _ = _quantized(name)
    set_quant_state(q, weight=False, act=True)
    calls = []
    real = QF.lsq_attention
    monkeypatch.setattr(QF, 'lsq_attention',
                        lambda *a: calls.append(1) or real(*a))
    x = inputs()
    results = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(QuantSDPA, '_fusable', lambda *a: False)
        q.zero_grad()
        out = flat(q(x))
        (out * torch.linspace(-1, 1, out.numel())).sum().backward()
        results.append([out.detach()] + [p.grad for p in q.parameters()
                                         if p.requires_grad])
    assert len(calls) == 2  # one per block, fused pass only
    for a, r in zip(*results):
        assert (a is None) == (r is None)
        assert a is None or torch.allclose(a, r, atol=1e-5, rtol=1e-4)
    steps = [m.step.grad for n, m in iter_quantizers(q)
             if n.endswith(('q_quantizer', 'p_quantizer'))]
    assert steps and all(g is not None and g.abs().sum() > 0 for g in steps)


@pytest.mark.parametrize('granularity', ['head', 'tensor'])
def test_qkv_quantizers_in_one_call_match_three(granularity):
    """QuantQKV quantizes q, k, v with one LSQ call in training: output and
    gradients (weights, input, the three steps) equal three separate
    quantizer calls on the unflattened output."""
    torch.manual_seed(0)
    heads, cfg = 2, dict(bits=4, granularity='channel' if granularity ==
                         'head' else 'tensor')
    qkv = QuantQKV.from_linear(nn.Linear(8, 24), heads, dict(bits=4),
                               dict(bits=4), cfg)
    for q in (qkv.q_quantizer, qkv.k_quantizer, qkv.v_quantizer):
        q.set_step(torch.rand(q.step.numel()) * 0.2 + 0.05)
        q.enabled = True
    x = torch.randn(3, 5, 8, requires_grad=True)
    dy = torch.randn(3, 5, 24)
    (qkv(x) * dy).sum().backward()
    got = [x.grad.clone(), qkv.weight.grad.clone()] + [
        q.step.grad.clone() for q in (qkv.q_quantizer, qkv.k_quantizer,
                                      qkv.v_quantizer)]
    x.grad = None
    qkv.zero_grad()
    out = nn.functional.linear(x, qkv.weight, qkv.bias)
    parts = out.unflatten(-1, (3, heads, -1)).unbind(-3)
    ref = torch.stack([q(p) for q, p in zip(
        (qkv.q_quantizer, qkv.k_quantizer, qkv.v_quantizer), parts)], -3)
    (ref.flatten(-3) * dy).sum().backward()
    want = [x.grad, qkv.weight.grad] + [
        q.step.grad for q in (qkv.q_quantizer, qkv.k_quantizer,
                              qkv.v_quantizer)]
    assert qkv.q_quantizer.step.numel() == (heads if granularity == 'head'
                                            else 1)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
