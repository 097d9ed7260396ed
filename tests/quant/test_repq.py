import copy

import pytest
import torch

from gplq_mm.quant import convert, qwt_blocks
from gplq_mm.quant.hosts import ln_linear_pairs
from gplq_mm.quant.repq import reparameterize
from tests.backbones import BACKBONES, build, flat, inputs, quant_cfg


@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_reparameterization_keeps_float_output(name):
    model, blocks = build(name)
    q = convert(copy.deepcopy(model), quant_cfg(blocks))
    x = inputs(n=4)
    pairs = [p for _, b in qwt_blocks(q) for p in ln_linear_pairs(b)]
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
