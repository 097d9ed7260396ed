import math

import pytest
import torch

from gplq_mm.analysis import metrics as M


def test_sqnr_of_a_known_tensor():
    x = torch.tensor([1.0, -2.0, 2.0, 0.0])  # sum x^2 = 9
    xq = x + torch.tensor([0.1, 0.0, -0.2, 0.2])  # sum e^2 = 0.09
    assert M.sqnr_db(M.error_sums(x, xq)) == pytest.approx(20.0)
    assert M.sqnr_db(M.error_sums(x, x)) == math.inf
    # sums add over batches: the SQNR of the whole, not a mean of dBs
    s = M.error_sums(x[:2], xq[:2]) + M.error_sums(x[2:], xq[2:])
    assert torch.allclose(s, M.error_sums(x, xq))


def test_clip_shares_of_a_known_grid():
    # 3-bit signed grid [-4, 3], step 0.5 per channel 0, 1.0 per channel 1
    x = torch.tensor([[-3.0, -5.0], [1.6, 3.6], [0.2, 2.0], [1.8, -4.6]])
    counts = M.clip_counts(x, torch.tensor([0.5, 1.0]), -4, 3, axis=-1)
    # x / s rounded: [-6, -5], [3, 4], [0, 2], [4, -5] -> low 3, high 2
    assert counts.tolist() == [3.0, 2.0, 8.0]
    ratio = M.range_over_grid(M.group_amax(x, 2, -1),
                              torch.tensor([0.5, 1.0]), 3)
    assert torch.allclose(ratio, torch.tensor([3.0 / 1.5, 5.0 / 3.0]))


def test_block_error_of_known_perturbations():
    torch.manual_seed(0)
    ref = torch.randn(2, 5, 8)
    rel, cos = M.rel_l2_cosine(M.error_sums(ref, 1.1 * ref))
    assert rel == pytest.approx(0.1) and cos == pytest.approx(1.0)
    # an orthogonal perturbation of the same norm: error 1, cosine 1/sqrt(2)
    flat = ref.flatten()
    e = torch.randn_like(flat)
    e = e - (e @ flat) / (flat @ flat) * flat
    e = e * flat.norm() / e.norm()
    rel, cos = M.rel_l2_cosine(M.error_sums(ref, (flat + e).view_as(ref)))
    assert rel == pytest.approx(1.0, rel=1e-6)
    assert cos == pytest.approx(2 ** -0.5, rel=1e-6)
