import pytest
import torch
import torch.nn as nn

from gplq_mm.quant.fused import lsq_fake_quant
from gplq_mm.quant.layers import (
    QuantConv2d,
    QuantConvTranspose2d,
    QuantLinear,
    QuantQKV,
)

ACT, WEIGHT = dict(bits=4, granularity='channel'), dict(bits=4)


class MyLinear(nn.Linear):
    """A float subclass, as hosts use (mmcv's Linear wrapper)."""


@pytest.mark.parametrize('make,qcls', [
    (lambda: MyLinear(6, 4), QuantLinear),
    (lambda: nn.Linear(6, 4, bias=False), QuantLinear),
    (lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1, groups=1), QuantConv2d),
    (lambda: nn.ConvTranspose2d(3, 5, 2, stride=2), QuantConvTranspose2d),
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
    for attr in ('stride', 'padding', 'dilation', 'groups', 'padding_mode',
                 'output_padding'):
        assert getattr(back, attr, None) == getattr(mod, attr, None)


def test_transposed_conv_quantizes_weights_per_output_channel(tmp_path):
    """A ConvTranspose2d's weight is (in, out, kh, kw): its steps run along
    axis 1; exported with kernel = stride it is a matmul of the pixels on
    integer kernels, with the PyTorch layer's values."""
    from gplq_mm.deploy import kernel_ops, session, trace
    from gplq_mm.quant import (
        QuantConfig,
        calibration,
        convert,
        quantize_weights,
        set_quant_state,
    )
    torch.manual_seed(0)
    net = nn.Sequential(nn.ConvTranspose2d(4, 6, 2, stride=2), nn.ReLU())
    convert(net, QuantConfig(act_granularity='tensor', qwt=False))
    q = net[0]
    assert isinstance(q, QuantConvTranspose2d)
    assert q.weight_quantizer.axis == 1
    assert q.weight_quantizer.step.shape == (6, )
    x = torch.randn(3, 4, 5, 7)
    with calibration(net):
        net(x)
    quantize_weights(net)
    set_quant_state(net, weight=True, act=True)
    wq = q.weight_quantizer
    codes = (q.weight / wq.step.view(1, -1, 1, 1)).round()
    assert codes.amin() >= wq.qmin and codes.amax() <= wq.qmax
    net.eval()
    with torch.no_grad():
        ref = net(x).numpy()
    path = str(tmp_path / 'deconv.onnx')
    assert trace(net, x, path)
    got = session(path).run(None, {'input': x.numpy()})[0]
    assert got.shape == (3, 6, 10, 14)
    assert abs(got - ref).max() < 1e-4
    ops = kernel_ops(path, x.numpy())
    assert ops.get('MatMulIntegerToFloat') == 1 and 'ConvTranspose' not in ops


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
