import pytest
import torch

from gplq_mm.quant import FakeQuantizer, calibration
from gplq_mm.quant import functional as QF


def test_state_dict_round_trip():
    a = FakeQuantizer(bits=3, granularity='channel', num_channels=5)
    a.set_step(torch.arange(1., 6.))
    b = FakeQuantizer(bits=3, granularity='channel', num_channels=5)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.step, a.step) and bool(b.initialized)
    c = FakeQuantizer(bits=3, granularity='channel', num_channels=5)
    c.load_state_dict({}, strict=True)  # a float checkpoint: no keys
    assert not bool(c.initialized)


def test_bad_args():
    with pytest.raises(ValueError, match=r'bits=1 .*2\.\.8'):
        FakeQuantizer(bits=1)
    with pytest.raises(ValueError, match="granularity='row'.*'channel'"):
        FakeQuantizer(granularity='row')
    with pytest.raises(ValueError, match="grid='log3'"):
        FakeQuantizer(grid='log3')
    with pytest.raises(ValueError, match="role='bias'"):
        FakeQuantizer(role='bias')


def test_enabled_without_step_raises():
    q = FakeQuantizer()
    q.enabled = True
    with pytest.raises(RuntimeError, match=r'not initialized.*calibration'):
        q(torch.randn(3))


@pytest.mark.parametrize('init', ['minmax', 'percentile'])
@pytest.mark.parametrize('signed', [True, False])
def test_calibration_equals_the_functional_steps(init, signed):
    """Observing batches sets the step the pure functions give: the running
    min / max of all batches, or the mean of per-batch percentiles."""
    torch.manual_seed(0)
    batches = [torch.randn(4, 6, 8) * (i + 1) for i in range(3)]
    q = FakeQuantizer(bits=4, signed=signed, granularity='channel',
                      num_channels=8, init=init, percentile=(0.05, 0.9))
    with calibration(q):
        for x in batches:
            assert torch.equal(q(x), x)  # observing passes data through
    if init == 'minmax':
        lo, hi = QF.minmax_range(torch.cat(batches), axis=-1)
    else:
        ranges = [QF.percentile_range(x, -1, 0.05, 0.9) for x in batches]
        lo = sum(r[0] for r in ranges) / 3
        hi = sum(r[1] for r in ranges) / 3
    want = QF.step_from_range(lo, hi, q.qmax, signed)
    assert torch.allclose(q.step.detach(), want, rtol=1e-6)
    assert bool(q.initialized) and not q.observing


def test_log2_grid_step_is_its_largest_value():
    q = FakeQuantizer(bits=3, grid='log2')
    assert not q.signed and not q.step.requires_grad
    with calibration(q):
        q(torch.tensor([0.1, 0.5, 0.8]))
    assert q.step.item() == pytest.approx(0.8)


def test_calibration_without_data_names_the_quantizer():
    q = FakeQuantizer(bits=5, granularity='channel', num_channels=3)
    with pytest.raises(RuntimeError, match=r'saw no data.*bits=5'):
        with calibration(q):
            pass
    # an exception inside the block leaves the quantizer as it was
    with pytest.raises(KeyError):
        with calibration(q):
            q(torch.randn(2, 3))
            raise KeyError('boom')
    assert not q.observing and not bool(q.initialized)
