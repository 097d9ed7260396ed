import math

import pytest
import torch

from gplq_mm.quant import fused as QF
from gplq_mm.quant.functional import broadcast_shape, lsq_grad_scale, qrange

# The fused functions are plain PyTorch: on a GPU the same tests check them
# there against the composed ops.
DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason='no CUDA device'))]


def test_lsq_hand_checked_example():
    """The docstring's example: x = [0.26, -1, 0.9], s = 0.1, 4-bit signed."""
    x = torch.tensor([0.26, -1.0, 0.9], requires_grad=True)
    s = torch.tensor([0.1], requires_grad=True)
    out = QF.lsq_fake_quant(x, s, -8, 7)
    assert torch.allclose(out, torch.tensor([0.3, -0.8, 0.7]))
    out.sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 0.0, 0.0]))
    g = 1 / math.sqrt(3 * 7)
    assert s.grad.item() == pytest.approx(g * ((3 - 2.6) - 8 + 7), rel=1e-5)


def _reference_lsq(x, s, qmin, qmax, axis):
    """LSQ written with autograd tricks (round / grad-scale STE)."""
    shape = broadcast_shape(x.dim(), axis, s.numel())
    g = lsq_grad_scale(x.numel() // s.numel(), qmax)
    s_ = (s * g - (s * g).detach() + s.detach()).view(shape)
    v = torch.clamp(x / s_, qmin, qmax)
    v = v + (torch.round(v) - v).detach()
    return v * s_


@pytest.mark.parametrize('axis,channels,signed', [(-1, 1, True),
                                                   (-1, 6, True),
                                                   (1, 4, False),
                                                   (-2, 5, True)])
def test_lsq_matches_autograd_reference(axis, channels, signed):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 6) * 2
    s = torch.rand(channels) * 0.3 + 0.05
    qmin, qmax = qrange(4, signed)
    dy = torch.randn_like(x)
    grads = []
    for fn in (QF.lsq_fake_quant, _reference_lsq):
        xx, ss = x.clone().requires_grad_(), s.clone().requires_grad_()
        out = fn(xx, ss, qmin, qmax, axis=axis)
        (out * dy).sum().backward()
        grads.append((out.detach(), xx.grad, ss.grad))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_lsq_saves_only_input_and_step():
    x = torch.randn(4, 8, requires_grad=True)
    s = torch.full((8, ), 0.1, requires_grad=True)
    out = QF.lsq_fake_quant(x, s, -8, 7)
    saved = out.grad_fn.saved_tensors
    assert len(saved) == 2
    assert saved[0].data_ptr() == x.data_ptr()


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('channels', [1, 12])
def test_fused_lsq_linear_matches_reference(channels, device):
    """Forward and backward (x, step, weight, bias) of the fused Stage-1
    Linear equal fake-quant-then-linear; it saves one tensor less."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    x = torch.randn(2, 5, 12, device=device) * 3
    s = torch.rand(channels, device=device) * 0.3 + 0.1
    w, b = torch.randn(7, 12, device=device), torch.randn(7, device=device)
    dy = torch.randn(2, 5, 7, device=device)
    results = []
    for fused in (True, False):
        xx, ss, ww, bb = (t.clone().requires_grad_() for t in (x, s, w, b))
        if fused:
            out = QF.lsq_linear(xx, ss, ww, bb, -8, 7)
            saved = out.grad_fn.saved_tensors
            # x, step, weight: all aliases, no new tensor
            assert [t.data_ptr() for t in saved] == \
                [xx.data_ptr(), ss.data_ptr(), ww.data_ptr()]
        else:
            out = F.linear(QF.lsq_fake_quant(xx, ss, -8, 7), ww, bb)
        (out * dy).sum().backward()
        results.append([out.detach(), xx.grad, ss.grad, ww.grad, bb.grad])
    for a, r in zip(*results):
        assert torch.allclose(a, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('device', DEVICES)
def test_fused_lsq_linear_under_bf16_autocast(device):
    import torch.nn.functional as F
    torch.manual_seed(0)
    x = torch.randn(4, 12)
    s = torch.rand(12) * 0.3 + 0.1
    w, b = torch.randn(7, 12), torch.randn(7)
    grads = []
    for fused in (True, False):
        xx, ss, ww, bb = (t.clone().to(device).requires_grad_()
                          for t in (x, s, w, b))
        with torch.autocast(device, torch.bfloat16):
            out = QF.lsq_linear(xx, ss, ww, bb, -8, 7) if fused else \
                F.linear(QF.lsq_fake_quant(xx, ss, -8, 7), ww, bb)
        assert out.dtype == torch.bfloat16
        out.float().sum().backward()
        grads.append([xx.grad, ss.grad, ww.grad, bb.grad])
    for a, r in zip(*grads):
        assert a.dtype == r.dtype
        assert torch.allclose(a, r, atol=5e-2, rtol=5e-2)


def _composed_attention(q, k, v, steps, qkv_range, p_range, mult):
    """Quantized attention from LSQ fake quantizers and plain ops (the
    per-head steps sit on axis 1 of (B, heads, N, d))."""
    qq, kq, vq = (QF.lsq_fake_quant(x, s, *qkv_range, axis=1)
                  for x, s in zip((q, k, v), steps))
    p = ((qq @ kq.transpose(-2, -1)) * mult).softmax(-1)
    return QF.lsq_fake_quant(p, steps[3], *p_range, axis=1) @ vq


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('heads_steps', [True, False])
@pytest.mark.parametrize('autocast', [False, True])
def test_fused_attention_matches_composed(heads_steps, autocast, device):
    """Forward and backward (q, k, v and the four LSQ steps) of the fused
    quantized attention equal the composed ops: to float rounding in fp32,
    to bf16 rounding under bf16 autocast (same dtypes as the composed
    ops)."""
    torch.manual_seed(0)
    b, h, n, d = 2, 3, 7, 4
    q, k, v = (torch.randn(b, h, n, d, device=device) * 2 for _ in range(3))
    c = h if heads_steps else 1
    steps = [torch.rand(c, device=device) * 0.3 + 0.1 for _ in range(3)] + \
        [torch.rand(c, device=device) * 0.02 + 0.03]
    dy = torch.randn(b, h, n, d, device=device)
    results = []
    for fn in (QF.lsq_attention, _composed_attention):
        xs = [t.clone().requires_grad_() for t in (q, k, v)]
        ss = [s.clone().requires_grad_() for s in steps]
        with torch.autocast(device, torch.bfloat16, enabled=autocast):
            out = fn(*xs, ss, (-8, 7), (0, 15), d**-0.5)
        (out.float() * dy).sum().backward()
        results.append([out] + [t.grad for t in xs + ss])
    tol = dict(atol=5e-2, rtol=5e-2) if autocast else dict(atol=1e-5,
                                                           rtol=1e-5)
    for a, r in zip(*results):
        assert a.dtype == r.dtype
        assert torch.allclose(a.float(), r.float(), **tol)
    assert results[0][4].abs().sum() > 0 and results[0][7].abs().sum() > 0


def test_fused_attention_saves_nothing_n_by_n():
    b, h, n, d = 1, 2, 16, 4
    q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
    steps = [torch.full((h, ), 0.2, requires_grad=True) for _ in range(4)]
    out = QF.lsq_attention(q, k, v, steps, (-8, 7), (0, 15), 0.5)
    saved = out.grad_fn.saved_tensors
    assert [t.data_ptr() for t in saved] == \
        [t.data_ptr() for t in (q, k, v, *steps)]
    with pytest.raises(ValueError, match=r'\(B, heads, N, d\)'):
        QF.lsq_attention(q[0], k[0], v[0], steps, (-8, 7), (0, 15), 0.5)
