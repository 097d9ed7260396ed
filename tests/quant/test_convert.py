import pytest
import torch
import torch.nn as nn

from gplq_mm.quant import (QuantConfig, QuantLinear, convert, iter_quantizers,
                           revert, set_quant_state)
from gplq_mm.quant.layers import QuantConv2d, QuantQKV
from tests.backbones import (BACKBONES, build, flat, inputs, quant_cfg,
                             quantized)

NAMES = sorted(BACKBONES)


@pytest.mark.parametrize('name', NAMES)
def test_quantizers_off_is_float_exactly(name):
    model, q, _ = quantized(name)
    x = inputs()
    ref = flat(model(x))
    set_quant_state(q, weight=False, act=False)
    assert torch.equal(flat(q(x)), ref)
    set_quant_state(q, weight=True, act=True)
    assert not torch.equal(flat(q(x)), ref)


@pytest.mark.parametrize('name', NAMES)
def test_every_site_is_quantized(name):
    model, blocks = build(name)
    q = convert(model, quant_cfg(blocks))
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
    """A second convert changes nothing: same module types, same state
    (values too) and the same Parameter objects, the float model's."""
    model, blocks = build(name)
    params = dict(model.named_parameters())
    once = convert(model, quant_cfg(blocks))
    types = [type(m) for m in once.modules()]
    state = {k: v.clone() for k, v in once.state_dict().items()}
    objects = dict(once.named_parameters())
    twice = convert(once, quant_cfg(blocks))
    assert [type(m) for m in twice.modules()] == types
    after = twice.state_dict()
    assert list(after) == list(state)
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert dict(twice.named_parameters()).keys() == objects.keys()
    assert all(p is objects[n] for n, p in twice.named_parameters())
    # every float Parameter is still the model's, under its float name
    assert all(objects[n] is p for n, p in params.items())


@pytest.mark.parametrize('name', NAMES)
def test_revert_restores_float(name):
    model, q, _ = quantized(name)
    set_quant_state(q, weight=True, act=True)
    r = revert(q)
    assert [type(m) for m in r.modules()] == [type(m) for m in model.modules()]
    assert list(r.state_dict()) == list(model.state_dict())
    x = inputs()
    assert torch.equal(flat(r(x)), flat(model(x)))


@pytest.mark.parametrize('name', NAMES)
def test_float_checkpoint_loads_strictly_and_state_round_trips(name):
    model, q, blocks = quantized(name)
    set_quant_state(q, weight=True, act=True)
    x = inputs()
    # float -> converted, strict
    fresh = convert(build(name, seed=5)[0], quant_cfg(blocks))
    fresh.load_state_dict(model.state_dict(), strict=True)
    set_quant_state(fresh, weight=False, act=False)
    assert torch.equal(flat(fresh(x)), flat(model(x)))
    # converted -> converted, strict, quantizer state included
    fresh.load_state_dict(q.state_dict(), strict=True)
    set_quant_state(fresh, weight=True, act=True)
    assert torch.equal(flat(fresh(x)), flat(q(x)))


@pytest.mark.parametrize('name', NAMES)
def test_steps_receive_gradients(name):
    _, q, _ = quantized(name)
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


def test_include_matching_nothing_errors():
    with pytest.raises(ValueError, match="'nothing.*' matches no module"):
        convert(nn.Sequential(nn.Linear(2, 2)), dict(include=['nothing.*']))
