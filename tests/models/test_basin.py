"""The basin measurements (paper Tables 5 and 7): internal FP32
(``model.internal_fp32``) and the weight drift from the FP32 checkpoint."""
import pytest
import torch
import torch.nn as nn
from mmengine.runner import Runner, load_checkpoint

from gplq_mm.analysis import weight_drift
from gplq_mm.quant import iter_quantizers, set_quant_state
from gplq_mm.quant.qwt import QwTCompensator
from gplq_mm.utils import mmengine_checkpoint_globals
from gplq_mm.utils.io import read_json
from tests.helpers import gplq_cfg
from tests.models.test_classifier import _batch, _build, _stage1


def _switches(model):
    return [m.enabled for m in model.student.modules()
            if isinstance(m, QwTCompensator)] + [
                q.enabled for _, q in iter_quantizers(model.student)]


def test_internal_fp32_of_stage1_is_quantizers_off(fp_checkpoint):
    model = _stage1(fp_checkpoint).eval()
    x = torch.randn(2, 3, 16, 16)
    stage1 = model(x)
    with set_quant_state(model.student, weight=False, act=False, qwt=False):
        off = model(x)
    other = _build(internal_fp32=True)
    other.load_state_dict(model.state_dict(), strict=True)
    other.eval()
    assert other.stage == 1 and not any(_switches(other))
    assert torch.equal(other(x), off)
    assert not torch.equal(other(x), stage1)
    # the Stage-1 model has not trained: its latent weights are the FP32 ones
    assert torch.equal(other(x), model.teacher(x, mode='tensor'))
    other.set_stage(2)
    assert not any(_switches(other))


def test_loaded_w4a4_checkpoint_runs_latent_weights(fp_checkpoint, tmp_path):
    model = _stage1(fp_checkpoint)
    x, _ = _batch(64)
    model.weight_ptq([dict(inputs=x[i:i + 16]) for i in (0, 16, 32, 48)])
    assert all(_switches(model))
    path = tmp_path / 'w4a4.pth'
    torch.save(dict(state_dict=model.state_dict()), path)
    other = _build(internal_fp32=True)
    with mmengine_checkpoint_globals():
        load_checkpoint(other, str(path), map_location='cpu', strict=True)
    assert other.stage == 2 and not any(_switches(other))
    model.eval()
    other.eval()
    with set_quant_state(model.student, weight=False, act=False, qwt=False):
        off = model(x[:4])
    assert torch.equal(other(x[:4]), off)
    assert not torch.equal(other(x[:4]), model(x[:4]))


def test_bad_internal_fp32_is_refused():
    with pytest.raises(ValueError, match="internal_fp32='yes': use True or "
                       'False'):
        _build(internal_fp32='yes')


def test_drift_is_zero_from_itself_and_counts_a_change(fp_checkpoint):
    model = _build(fp_checkpoint)
    model.init_weights()
    drift = weight_drift(model.student, model.teacher)
    names = [n[:-len('.weight_quantizer')]
             for n, _ in iter_quantizers(model.student, 'weight')]
    assert [r['name'] for r in drift['layers']] == names
    assert len(names) == 9  # patch embed; qkv, proj, fc1, fc2 of 2 blocks
    assert all(r[k] == 0 for r in drift['layers']
               for k in ('mae', 'mse', 'rel_mae'))
    assert drift['mae_mean'] == drift['mse_mean'] == 0
    fc2 = model.student.backbone.layers[1].ffn.layers[1]
    with torch.no_grad():
        fc2.weight[0, 0] += 0.5
    drift = weight_drift(model.student, model.teacher)
    rows = {r['name']: r for r in drift['layers']}
    name = 'backbone.layers.1.ffn.layers.1'
    n = fc2.weight.numel()
    assert rows[name]['numel'] == n
    assert rows[name]['mae'] == pytest.approx(0.5 / n)
    assert rows[name]['mse'] == pytest.approx(0.25 / n)
    ref = model.teacher.backbone.layers[1].ffn.layers[1].weight
    assert rows[name]['rel_mae'] == pytest.approx(
        0.5 / n / float(ref.abs().mean()))
    assert all(r['mae'] == 0 for k, r in rows.items() if k != name)
    assert drift['mae_mean'] == pytest.approx(0.5 / n / len(rows))


def test_drift_refuses_models_that_do_not_match():
    model = _build()
    with pytest.raises(ValueError, match="the teacher has no layer "
                       "'backbone.patch_embed.projection' with a weight"):
        weight_drift(model.student, nn.Linear(2, 2))
    with pytest.raises(ValueError, match='the student has no quantized '
                       'layer'):
        weight_drift(model.teacher, model.teacher)


@pytest.mark.parametrize('method', ['gplq', 'minmax-ptq'])
def test_run_writes_weight_drift(digits_root, fp_checkpoint, tmp_path,
                                 method):
    """After Stage 1 (one iteration here), before Stage 2: a PTQ method
    trains nothing, so its weights have not moved."""
    cfg = gplq_cfg(digits_root, str(tmp_path), fp_checkpoint,
                   train_images=16, method=method,
                   hook=dict(weight_ptq=False))
    cfg.custom_hooks[0].update(calib_images=16, pca_images=16,
                               ptq_images=16)
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    runner = Runner.from_cfg(cfg)
    runner.train()
    stats = read_json(tmp_path / 'gplq_stats.json')['weight_drift']
    assert stats == weight_drift(runner.model.student, runner.model.teacher)
    assert len(stats['layers']) == len(
        list(iter_quantizers(runner.model.student, 'weight')))
    if method == 'gplq':
        assert stats['mae_mean'] > 0 and stats['mse_mean'] > 0
    else:
        assert stats['mae_mean'] == stats['mse_mean'] == 0


def test_training_with_internal_fp32_is_refused(digits_root, fp_checkpoint,
                                                tmp_path):
    cfg = gplq_cfg(digits_root, str(tmp_path), fp_checkpoint,
                   train_images=16, internal_fp32=True)
    with pytest.raises(ValueError, match='internal_fp32=True runs every '
                       'quantizer off: it evaluates a checkpoint'):
        Runner.from_cfg(cfg).train()
