import pytest
import torch
import torch.nn as nn

from gplq_mm.quant.fused import lsq_fake_quant
from gplq_mm.quant.layers import QuantConv2d, QuantLinear, QuantQKV

ACT, WEIGHT = dict(bits=4, granularity='channel'), dict(bits=4)


class MyLinear(nn.Linear):
    """A float subclass, as hosts use (mmcv's Linear wrapper)."""


@pytest.mark.parametrize('make,qcls', [
    (lambda: MyLinear(6, 4), QuantLinear),
    (lambda: nn.Linear(6, 4, bias=False), QuantLinear),
    (lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1, groups=1), QuantConv2d),
])
def test_wrappers_reuse_the_float_parameters_and_invert(make, qcls):
    torch.manual_seed(0)
    mod = make().eval()
    q = qcls.from_float(mod, ACT, WEIGHT)
    assert type(q) is qcls and not q.training
    assert q.weight is mod.weight and q.bias is mod.bias
    names = [n for n, _ in mod.named_parameters()]
    assert [n for n, _ in q.named_parameters()][:len(names)] == names
    x = torch.randn(2, 6) if qcls is QuantLinear else torch.randn(1, 3, 8, 8)
    assert torch.equal(q(x), mod(x))  # quantizers off: the float layer
    back = q.to_float()
    assert type(back) is type(mod)
    assert back.weight is mod.weight and back.bias is mod.bias
    assert list(back.state_dict()) == list(mod.state_dict())
    assert not back.training and torch.equal(back(x), mod(x))
    for attr in ('stride', 'padding', 'dilation', 'groups', 'padding_mode'):
        assert getattr(back, attr, None) == getattr(mod, attr, None)


def test_quantizers_sized_per_channel():
    q = QuantConv2d.from_float(nn.Conv2d(3, 5, 1), ACT, WEIGHT)
    assert q.input_quantizer.step.shape == (3, )
    assert q.input_quantizer.axis == 1
    assert q.weight_quantizer.step.shape == (5, )
    assert q.weight_quantizer.role == 'weight'


def test_qkv_width_must_split_into_heads():
    with pytest.raises(ValueError, match=r'out_features=20 .*3 \* num_heads'):
        QuantQKV.from_float(nn.Linear(4, 20), ACT, WEIGHT, num_heads=2,
                            attn_cfg=ACT)


@pytest.mark.parametrize('granularity', ['channel', 'tensor'])
def test_qkv_quantizers_in_one_call_match_three(granularity):
    """QuantQKV quantizes q, k, v with one LSQ call: output and gradients
    (input, weight, the three steps) equal quantizing each third of the
    output by itself."""
    torch.manual_seed(0)
    heads = 2
    qkv = QuantQKV.from_float(nn.Linear(8, 24), ACT, WEIGHT, num_heads=heads,
                              attn_cfg=dict(bits=4, granularity=granularity))
    qs = qkv.operand_quantizers
    for q in qs:
        q.set_step(torch.rand(q.step.numel()) * 0.2 + 0.05)
        q.enabled = True
    assert qs[0].step.numel() == (heads if granularity == 'channel' else 1)
    x = torch.randn(3, 5, 8, requires_grad=True)
    dy = torch.randn(3, 5, 24)
    (qkv(x) * dy).sum().backward()
    got = [x.grad.clone(), qkv.weight.grad.clone()] + [
        q.step.grad.clone() for q in qs]
    x.grad = None
    qkv.zero_grad()
    out = nn.functional.linear(x, qkv.weight, qkv.bias)
    parts = out.unflatten(-1, (3, heads, -1)).unbind(-3)
    ref = torch.stack([
        lsq_fake_quant(p, q.step, q.qmin, q.qmax, axis=-2)
        for q, p in zip(qs, parts)], -3)
    (ref.flatten(-3) * dy).sum().backward()
    want = [x.grad, qkv.weight.grad] + [q.step.grad for q in qs]
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    # deferred: the consumer quantizes; the layer's output is the float one
    qkv.deferred = True
    assert torch.equal(qkv(x), nn.functional.linear(x, qkv.weight, qkv.bias))
