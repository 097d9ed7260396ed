import torch

from gplq_mm.quant.qwt import QwTStats, _Moments


def test_solution_equals_least_squares():
    torch.manual_seed(0)
    x = torch.randn(6, 20, 8)  # (images, tokens, D)
    w_true = torch.randn(8, 8)
    t = x @ w_true + 0.5 + 0.01 * torch.randn(6, 20, 8)
    stats = QwTStats(8, 8)
    stats.update(x[:4], t[:4])
    stats.update(x[4:], t[4:])
    w, r2 = stats.solve(ridge=0.0)
    xa = torch.cat([x.reshape(-1, 8), torch.ones(120, 1)], 1).double()
    ref = torch.linalg.lstsq(xa, t.reshape(-1, 8).double()).solution
    assert torch.allclose(w, ref, atol=1e-8)
    assert r2 > 0.99


def test_r2_matches_direct_computation():
    torch.manual_seed(1)
    x, t = torch.randn(50, 4).double(), torch.randn(50, 3).double()
    m = _Moments(4, 3)
    m.update(x, t)
    w = torch.randn(5, 3).double()
    pred = torch.cat([x, torch.ones(50, 1).double()], 1) @ w
    direct = 1 - (t - pred).pow(2).sum() / (t - t.mean(0)).pow(2).sum()
    assert abs(m.r2(w) - float(direct)) < 1e-10


def test_unhelpful_compensator_has_negative_held_out_r2():
    """Targets unrelated to X: the fit only memorizes noise, so R^2 on the
    held-out images is negative and fit_qwt drops it."""
    torch.manual_seed(2)
    stats = QwTStats(16, 16)
    for _ in range(4):
        stats.update(torch.randn(4, 3, 16), torch.randn(4, 3, 16))
    _, r2 = stats.solve(ridge=1e-6)
    assert r2 < 0


def _converted_vit():
    import copy

    from gplq_mm.quant import (
        calibration,
        convert,
        quantize_weights,
        qwt_blocks,
        set_quant_state,
    )
    from tests.backbones import build, inputs
    model, blocks = build('mmpretrain_vit')
    q = convert(copy.deepcopy(model), dict(include=blocks, w_bits=3))
    with calibration(q):
        q(inputs(seed=3, n=8))
    set_quant_state(q, act=True)
    quantize_weights(q)
    set_quant_state(q, weight=True)
    return q, qwt_blocks(q)


def test_fit_qwt_reduces_error_and_drops_useless():
    from gplq_mm.quant import fit_qwt, set_quant_state
    from tests.backbones import flat, inputs
    q, blocks = _converted_vit()
    calib = [inputs(seed=s, n=8) for s in range(4)]

    def err():
        set_quant_state(q, weight=False)
        ref = [flat(q(x)) for x in calib]
        set_quant_state(q, weight=True)
        return sum((flat(q(x)) - r).pow(2).sum() for x, r in zip(calib, ref))

    # err() is the distance to the W32A4 model: what the 'chained' target
    # fits (the paper's 'same_input' target fits each block's own weight
    # error, test_qwt_targets_by_hand)
    before = err()
    r2 = fit_qwt(q, blocks, calib, q, target='chained')
    assert list(r2) == [n for n, _ in blocks]
    assert all(b.qwt.on for n, b in blocks if r2[n] > 0)
    assert err() < before
    # When weight quantization changes nothing, the target is zero: dropped.
    # (the switch drives a module without quantizers: q2's weights stay
    # quantized in both passes)
    q2, blocks2 = _converted_vit()
    r2 = fit_qwt(torch.nn.Module(), blocks2, calib, q2)
    assert all(v <= 0 for v in r2.values())
    assert not any(b.qwt.on for _, b in blocks2)
    assert all(b.qwt.weight.abs().sum() == 0 for _, b in blocks2)


def _io(model, block, x):
    """(input, output) of ``block`` in ``model(x)``."""
    got = {}
    h = block.register_forward_hook(
        lambda m, a, out: got.update(x=a[0], y=out))
    model(x)
    h.remove()
    return got['x'], got['y']


def test_qwt_targets_by_hand():
    """The last block's compensator against a fit on hand-collected data:
    X = its input in the W4A4 model (the earlier block compensated); target
    = FP32-weight output on the same X minus the 4-bit-weight output
    ('same_input', the paper's), or the output of a W32A4 pass without
    compensation minus the 4-bit-weight output ('chained')."""
    from gplq_mm.quant import fit_qwt, set_quant_state
    from tests.backbones import inputs
    calib = [inputs(seed=s, n=8) for s in range(4)]
    fitted = {}
    for target in ('same_input', 'chained'):
        q, blocks = _converted_vit()
        fit_qwt(q, blocks, calib, q, ridge=1e-4, target=target)
        first, last = blocks[0][1], blocks[-1][1]
        assert first.qwt.on and last.qwt.on
        stats = QwTStats(last.qwt.weight.shape[1], last.qwt.weight.shape[0])
        with torch.no_grad():
            for x in calib:
                last.qwt.enabled = False
                x_in, y_q = _io(q, last, x)
                set_quant_state(q, weight=False)
                if target == 'same_input':
                    y = last(x_in)
                else:
                    first.qwt.enabled = False
                    y = _io(q, last, x)[1]
                    first.qwt.enabled = True
                set_quant_state(q, weight=True)
                stats.update(x_in, y - y_q)
        w, _ = stats.solve(1e-4)
        assert torch.allclose(last.qwt.weight, w[:-1].T.float(), atol=1e-5)
        assert torch.allclose(last.qwt.bias, w[-1].float(), atol=1e-5)
        fitted[target] = last.qwt.weight.clone()
    assert not torch.allclose(fitted['same_input'], fitted['chained'],
                              atol=1e-3)
