import pytest
import torch

from gplq_mm.quant import functional as QF

# The docstring examples of gplq_mm/quant/*.py run as doctests too
# (pytest --doctest-modules, see pytest.ini).


def test_qrange_and_fake_quant_example():
    assert QF.qrange(4, True) == (-8, 7)
    assert QF.qrange(3, False) == (0, 7)
    out = QF.fake_quant(torch.tensor([0.26, -1.0, 0.9]), torch.tensor(0.1),
                        -8, 7)
    assert torch.allclose(out, torch.tensor([0.3, -0.8, 0.7]))


def test_steps_from_ranges():
    x = torch.tensor([[-2., 1.], [0.5, 7.]])
    lo, hi = QF.minmax_range(x, axis=0)
    assert torch.allclose(QF.step_from_range(lo, hi, 7, signed=True),
                          torch.tensor([2 / 7, 1.0]))
    lo, hi = QF.minmax_range(x)  # per tensor
    assert torch.allclose(QF.step_from_range(lo, hi, 15, signed=False),
                          torch.tensor([7 / 15]))
    y = torch.arange(101.).reshape(1, -1)  # 0..100
    lo, hi = QF.percentile_range(y, axis=0)
    assert lo.tolist() == [1.0] and hi.tolist() == [99.0]
    assert torch.allclose(QF.step_from_range(lo, hi, 7, signed=True),
                          torch.tensor([99 / 7]))
    # an all-negative unsigned range clamps to the smallest step
    assert QF.step_from_range(torch.tensor([-3.]), torch.tensor([-1.]), 15,
                              signed=False).item() == pytest.approx(1e-8)


def test_lsq_backward_example():
    """x = [0.26, -1, 0.9], s = 0.1, 4-bit signed, dy = 1."""
    x, s = torch.tensor([0.26, -1.0, 0.9]), torch.tensor([0.1])
    gx, gs = QF.lsq_backward(x, s, torch.ones(3), -8, 7, (1, ), 0.5)
    assert torch.equal(gx, torch.tensor([1.0, 0.0, 0.0]))
    assert gs.item() == pytest.approx(0.5 * ((3 - 2.6) - 8 + 7), rel=1e-5)


def test_weight_search_picks_lowest_error():
    torch.manual_seed(0)
    w = torch.randn(4, 10000)
    w[0, 0] = 50.0  # one outlier: clipping it must win for channel 0
    step = QF.search_weight_step(w, -8, 7)
    full = w.abs().amax(1) / 7
    assert step[0] < full[0]
    for cand in (0.999, 0.9999, 0.99999, 1.0):
        s = (QF.percentile_range(w.abs(), 0, 0.0, cand)[1] / 7)
        err = (QF.fake_quant(w, s[:, None], -8, 7) - w).pow(2).sum(1)
        best = (QF.fake_quant(w, step[:, None], -8, 7) - w).pow(2).sum(1)
        assert (best <= err + 1e-6).all()




def test_log2_grid():
    s = torch.tensor(0.5)
    x = torch.tensor([0.5, 0.3, 0.2, 0.125, 0.06, 0.0])
    # 3 bits, 8 codes: 0.5 * 2^-k, k = 0..6, and 0
    out = QF.log2_quant(x, s, levels=8)
    assert torch.equal(out, torch.tensor([0.5, 0.25, 0.25, 0.125, 0.0625,
                                          0.0]))
    tiny = QF.log2_quant(torch.tensor([0.5 * 2**-6, 0.5 * 2**-7]), s, 8)
    assert torch.equal(tiny, torch.tensor([0.5 * 2**-6, 0.0]))


def test_log_sqrt2_grid_is_repq_vits():
    """Hand-computed, 2 bits (4 codes), step 1: -2 log2(x) = 0, 1.47, 2.30,
    3.47, 4.64 rounds to k = 0, 1, 2, 3, 5; sqrt(2)^-k, and 0 for k >= 4."""
    x = torch.tensor([1.0, 0.6, 0.45, 0.3, 0.2, 1.3, 0.0])
    out = QF.log_sqrt2_quant(x, torch.tensor(1.0), levels=4)
    r = 2 ** -0.5
    assert torch.allclose(out, torch.tensor([1, r, 0.5, r / 2, 0, 1, 0]),
                          rtol=0, atol=1e-7)
    # RepQ-ViT's own formulation (LogSqrt2Quantizer: ceil and an odd-code
    # factor sqrt(2)) on many values, 4 bits, step 0.9
    x = torch.rand(10000) ** 4
    k = torch.round(-2 * torch.log2(x / 0.9))
    q = k.clamp(0, 15)
    ref = 2 ** (-torch.ceil(q / 2)) * (1 + (q % 2) * (2 ** 0.5 - 1)) * 0.9
    ref[k >= 16] = 0
    out = QF.log_sqrt2_quant(x, torch.tensor(0.9), levels=16)
    assert torch.allclose(out, ref, rtol=1e-6, atol=0)
