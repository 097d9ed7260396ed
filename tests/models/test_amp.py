"""Stage 1 under CPU autocast (fp16 and bf16): the step cannot vanish, and
a whole iteration gives a finite loss and finite gradients."""
import pytest
import torch

from gplq_mm.quant import iter_quantizers
from gplq_mm.quant.functional import codes, fake_quant, step_dtype
from gplq_mm.quant.fused import lsq_fake_quant
from tests.models.test_classifier import _batch, _stage1


def test_fp16_keeps_a_tiny_step():
    """The 1e-8 floor of a dead channel is 0 in float16: x / s would be
    NaN. Quantization divides a float16 tensor in float32."""
    x = torch.tensor([[0.0, 0.0], [0.3, -0.2]], dtype=torch.float16)
    step = torch.tensor([1e-8, 0.1])
    assert torch.tensor(1e-8).half() == 0  # the cause
    assert step_dtype(x) == torch.float32
    out = fake_quant(x, step, -8, 7)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    s = step.clone().requires_grad_()
    y = lsq_fake_quant(x.clone().requires_grad_(), s, -8, 7, axis=-1)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(s.grad).all()
    # the codes equal float32's wherever float16 holds the value exactly
    x32 = torch.randn(64, 2)
    x16 = x32.half()
    assert torch.equal(codes(x16, step, -8, 7, axis=-1).float(),
                       codes(x16.float(), step, -8, 7, axis=-1))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_stage1_iteration_under_cpu_autocast(fp_checkpoint, dtype):
    model = _stage1(fp_checkpoint)
    model.train()
    # a dead channel: one activation step at the floor
    q = next(q for _, q in iter_quantizers(model.student, 'act')
             if q.step.numel() > 1)
    with torch.no_grad():
        q.step[0] = 1e-8
    x, samples = _batch()
    with torch.autocast('cpu', dtype=dtype):
        losses = model.loss(x, samples)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # the L_PCA term is computed in float32 (no cancelling half matmuls)
    assert losses['loss_pca'].dtype == torch.float32


def test_a_stage1_step_reads_the_device_once(fp_checkpoint, monkeypatch):
    """Host syncs in a Stage-1 loss: exactly one, the non-finite-loss check
    (it must stop the step before the update); L_PCA's kept dimension and
    fitted flag are Python values."""
    model = _stage1(fp_checkpoint)
    model.train()
    x, samples = _batch()
    model(x, samples, mode='loss')  # warm: first-call work is not counted
    calls = []
    for name in ('__bool__', 'item', 'tolist', '__int__', '__float__',
                 '__index__'):
        orig = getattr(torch.Tensor, name)

        def spy(self, *a, _orig=orig, _name=name, **k):
            calls.append(_name)
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, spy)
    model(x, samples, mode='loss')
    monkeypatch.undo()
    assert calls == ['__bool__'], calls
