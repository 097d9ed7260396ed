"""The baselines' defining details, one config switch from GPLQ."""
import copy

import pytest
import torch
from mmengine.registry import MODELS, DefaultScope
from mmengine.runner import Runner

import gplq_mm  # noqa: F401
from gplq_mm.models.methods import METHODS, MethodRecipe
from gplq_mm.quant import iter_quantizers
from gplq_mm.quant.functional import qrange
from tests.helpers import ARCH, gplq_cfg


def _build(method, checkpoint=None):
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(dict(type='GPLQClassifier',
                                 architecture=copy.deepcopy(ARCH),
                                 checkpoint=checkpoint, method=method))


def _calibrated(method, ckpt):
    model = _build(method, ckpt)
    model.init_weights()
    model.calibrate([dict(inputs=torch.randn(8, 3, 16, 16))])
    return model


def test_unknown_method():
    with pytest.raises(ValueError,
                       match=r"method='awq' is not allowed.*'gplq'"):
        _build('awq')


def test_recipes_are_validated_and_frozen():
    with pytest.raises(ValueError, match=r'clip=\(1\.5,\)'):
        MethodRecipe(clip=(1.5, ))
    with pytest.raises(ValueError, match='weights_in_stage1=True needs'):
        MethodRecipe(trains=False, weights_in_stage1=True)
    with pytest.raises(AttributeError):
        METHODS['gplq'].trains = False
    assert [m for m, r in METHODS.items() if not r.trains] == \
        ['minmax-ptq', 'repq-ptq']


def test_qat_quantizes_weights_in_training_gplq_does_not(fp_checkpoint):
    for method, weights_on in (('qat-w4a4', True), ('gplq', False)):
        model = _calibrated(method, fp_checkpoint)
        model.train()
        wq = [q for _, q in iter_quantizers(model.student, 'weight')]
        assert all(q.enabled == weights_on for q in wq), method
        from mmpretrain.structures import DataSample
        x = torch.randn(4, 3, 16, 16)
        samples = [DataSample().set_gt_label(i) for i in range(4)]
        model.prepare([dict(inputs=torch.randn(64, 3, 16, 16))])
        sum(model.loss(x, samples).values()).backward()
        grads = [q.step.grad is not None for q in wq]
        assert all(grads) if weights_on else not any(grads), method


def test_minmax_ptq_is_per_tensor_with_full_range_weights(fp_checkpoint):
    model = _calibrated('minmax-ptq', fp_checkpoint)
    acts = dict(iter_quantizers(model.student, 'act'))
    assert all(q.step.numel() == 1 for q in acts.values())
    model.weight_ptq([dict(inputs=torch.randn(4, 3, 16, 16))])
    _, qmax = qrange(4, True)
    for mod in model.student.modules():
        if hasattr(mod, 'weight_quantizer'):
            w = mod.weight.detach().reshape(mod.weight.shape[0], -1)
            expect = w.abs().amax(1) / qmax
            assert torch.allclose(mod.weight_quantizer.step, expect,
                                  rtol=1e-5)


def test_repq_uses_log_sqrt2_softmax_and_reparameterizes(fp_checkpoint):
    float_model = _build('gplq', fp_checkpoint)
    float_model.init_weights()
    model = _calibrated('repq-ptq', fp_checkpoint)
    ps = [q for n, q in iter_quantizers(model.student)
          if n.endswith('p_quantizer')]
    assert ps and all(q.grid == 'log_sqrt2' for q in ps)
    ln = model.student.backbone.layers[0].ln1
    ln_float = float_model.student.backbone.layers[0].ln1
    assert not torch.equal(ln.weight, ln_float.weight)
    # Reparameterization alone leaves the float function unchanged.
    from gplq_mm.quant import set_quant_state
    set_quant_state(model.student, weight=False, act=False)
    model.eval()
    float_model.eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(model(x), float_model(x), atol=1e-4)


def test_ptq_methods_skip_training(digits_root, fp_checkpoint, tmp_path):
    cfg = gplq_cfg(digits_root, str(tmp_path), fp_checkpoint,
                   method='minmax-ptq')
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 0 and runner.model.stage == 2
    assert (tmp_path / 'minmax-ptq_w4a4.pth').exists()
