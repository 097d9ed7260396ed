import pytest
import torch

from gplq_mm.models import PCAProjector, choose_num_components, pca_loss


def test_pca_dimension_rule():
    # Spectrum where the first 40 directions hold 59% and 64 hold 65%.
    ev = torch.zeros(192)
    ev[:40] = 0.59 / 40
    ev[40:64] = 0.06 / 24
    ev[64:] = 0.35 / 128
    assert choose_num_components(ev, 0.6, 32) == 64
    ev2 = torch.zeros(192)
    ev2[0] = 0.61
    ev2[1:] = 0.39 / 191
    assert choose_num_components(ev2, 0.6, 32) == 32
    # Flat 768-d spectrum: 60% needs 461 dims -> 480.
    assert choose_num_components(torch.full((768, ), 1 / 768.), 0.6, 32) \
        == 480
    # Never beyond the feature dim.
    assert choose_num_components(torch.full((40, ), 1 / 40.), 0.99, 32) == 40


def test_pca_loss_hand_computed():
    f_s = torch.tensor([[1., 2., 3.], [0., 0., 1.]])
    f_t = torch.tensor([[1., 0., 3.], [0., 1., 1.]])
    mean = torch.tensor([5., 5., 5.])  # cancels out
    v = torch.tensor([[0., 0.], [1., 0.], [0., 1.]])  # keep dims 1 and 2
    # Rows of (f_s - f_t) V: [2, 0] and [-1, 0] -> (4 + 1) / 2
    assert pca_loss(f_s, f_t, mean, v).item() == pytest.approx(2.5)


def test_pca_fit_recovers_directions():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(64, 64))[0]
    scales = torch.cat([torch.full((8, ), 10.), torch.full((56, ), 0.1)])
    x = (torch.randn(4000, 64) * scales) @ basis.T + 3.0
    pca = PCAProjector(64, threshold=0.6, multiple=32)
    for chunk in x.split(500):
        pca.update(chunk)
    assert pca.fit() == 32
    assert bool(pca.fitted) and pca.kept.shape == (64, 32)
    assert torch.allclose(pca.mean, torch.full((64, ), 3.0), atol=0.5)
    # The top-8 principal subspace equals the planted one.
    top = pca.components[:, :8]
    proj = basis[:, :8].T @ top
    assert torch.linalg.svdvals(proj).min() > 0.99
    assert pca.explained[:8].sum() > 0.95
    # All of it is in the state_dict.
    other = PCAProjector(64)
    other.load_state_dict(pca.state_dict())
    assert int(other.num_components) == 32 and bool(other.fitted)
