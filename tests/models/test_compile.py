"""model.compile_cfg: compiled backbones match eager; failures fall back to
eager with one warning."""
import copy

import pytest
import torch

from gplq_mm.models import compile as gplq_compile
from tests.models.test_classifier import _batch, _build


def _stage1(**kw):
    torch.manual_seed(0)
    model = _build(None, **kw)
    model.teacher.load_state_dict(model.student.state_dict(), strict=False)
    x, _ = _batch(8)
    model.calibrate([dict(inputs=x)])
    model.prepare([dict(inputs=torch.randn(64, 3, 16, 16))])
    return model.train()


def _loss_and_grads(model, x, samples):
    model.zero_grad()
    loss = sum(model(x, samples, mode='loss').values())
    loss.backward()
    return [loss.detach()] + [p.grad for p in model.parameters()
                              if p.requires_grad]


@pytest.fixture
def warnings_seen(monkeypatch):
    seen = []
    monkeypatch.setattr(gplq_compile, 'print_log',
                        lambda msg, **kw: seen.append(msg))
    return seen


def _compare(model, x, samples):
    ref = copy.deepcopy(model)
    ref.set_compile_cfg(None)
    for _ in range(2):
        got = _loss_and_grads(model, x, samples)
        want = _loss_and_grads(ref, x, samples)
        for a, b in zip(got, want):
            assert (a is None) == (b is None)
            assert a is None or torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        model.eval()
        ref.eval()
        assert torch.allclose(model(x), ref(x), atol=1e-5, rtol=1e-4)


def test_compiled_backbones_match_eager(warnings_seen):
    """aot_eager traces dynamo + AOT autograd through every quantizer and
    fused function without running a C++ compiler."""
    torch._dynamo.reset()
    model = _stage1(compile_cfg=dict(backend='aot_eager'))
    x, samples = _batch()
    _compare(model, x, samples)
    assert not model.compiler.failed and not warnings_seen
    assert model.compiler.probed == {'student.backbone'}
    # traced as one graph per backbone: no graph break (mmpretrain's numpy
    # drop-path rates are made Python floats)
    assert torch._dynamo.utils.counters['graph_break'] == {}
    # nothing left on the modules, the state_dict is the eager one
    for m in (model.student.backbone, model.teacher.backbone):
        assert 'forward' not in m.__dict__
    assert set(model.state_dict()) == set(_build(None).state_dict())


def _failing_forward(gm, example_inputs):
    raise RuntimeError('forward compiler broke')


def _failing_backward():
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def bw(gm, example_inputs):
        def run(*args):
            raise RuntimeError('invalid gradient from the compiled backward')
        return make_boxed_func(run)
    return aot_autograd(fw_compiler=lambda gm, ex: make_boxed_func(
        gm.forward), bw_compiler=bw)


@pytest.mark.parametrize('where', ['forward', 'backward'])
def test_compile_failure_falls_back_with_one_warning(where, warnings_seen):
    torch._dynamo.reset()
    backend = _failing_forward if where == 'forward' else _failing_backward()
    model = _stage1(compile_cfg=dict(backend=backend))
    x, samples = _batch()
    _compare(model, x, samples)  # trains and evaluates eagerly
    assert model.compiler.failed
    assert len(warnings_seen) == 1
    msg = warnings_seen[0]
    assert 'student.backbone' in msg and 'eagerly' in msg
    assert ('forward compiler broke' if where == 'forward' else
            'invalid gradient') in msg
    assert not any(p.grad is not None for p in model.teacher.parameters())


def test_bad_compile_cfg():
    with pytest.raises(TypeError, match='compile_cfg must be a bool or a '
                       'dict'):
        _build(None, compile_cfg='yes')


def test_compiled_detector_trains_through_the_runner(
        digit_coco_root, det_fp_checkpoint, tmp_path, warnings_seen):
    """compile_cfg in a config: the Runner trains a Mask R-CNN with its
    backbones compiled (input sizes vary: recompiles, no failure), then
    Stage 2 and validation run as usual."""
    from mmengine.runner import Runner

    from tests.helpers import gplq_det_cfg
    torch._dynamo.reset()
    cfg = gplq_det_cfg(digit_coco_root, str(tmp_path), det_fp_checkpoint)
    cfg.model.compile_cfg = dict(backend='aot_eager')
    runner = Runner.from_cfg(cfg)
    runner.train()
    comp = runner.model.compiler
    assert not comp.failed and not warnings_seen
    assert comp.probed == {'student.backbone'}
    assert runner.model.stage == 2
    assert (tmp_path / 'gplq_w4a4.pth').exists()


DDP_WORKER = r'''
import json, sys
sys.path.insert(0, {root!r})
from mmengine.dist import get_rank
from mmengine.runner import Runner
import gplq_mm
from gplq_mm.utils import finish_launch, prepare_launch
from tests.helpers import gplq_cfg
cfg = gplq_cfg({data!r}, {work!r}, {ckpt!r}, train_images=64,
               quant_cfg=dict(attn_init='minmax'), compile_cfg={compile!r})
cfg.custom_hooks[0].update(calib_images=32, pca_images=64, ptq_images=32,
                           weight_ptq=False)
cfg.train_dataloader.batch_size = 8
cfg.default_hooks.logger.interval = 1
# SGD: Adam's sign-like first steps would turn float rounding into weight
# differences that 4-bit rounding then amplifies
cfg.optim_wrapper = dict(optimizer=dict(type='SGD', lr=1e-2))
cfg.launcher = 'pytorch'
prepare_launch(cfg)
runner = Runner.from_cfg(cfg)
runner.train()
compiler = runner.model.module.compiler
if get_rank() == 0:
    with open({work!r} + '/out.json', 'w') as f:
        json.dump(dict(losses=runner.message_hub.log_scalars[
            'train/loss'].data[0].tolist(),
            failed=None if compiler is None else compiler.failed), f)
del runner, compiler
finish_launch()
'''


def test_compiled_stage1_under_ddp_matches_eager(digits_root, fp_checkpoint,
                                                 tmp_path):
    """2 gloo processes: the compiled backbones (aot_eager) run under DDP
    without falling back to eager, with eager's losses."""
    import json
    import os
    import os.path as osp
    import subprocess
    import sys
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    out = {}
    for name, comp in (('eager', False), ('compiled',
                                          dict(backend='aot_eager'))):
        work = tmp_path / name
        work.mkdir()
        script = tmp_path / f'{name}.py'
        script.write_text(DDP_WORKER.format(
            root=root, data=digits_root, work=str(work), ckpt=fp_checkpoint,
            compile=comp))
        proc = subprocess.run(
            [sys.executable, '-m', 'torch.distributed.run', '--standalone',
             '--nproc_per_node=2', str(script)], cwd=root, timeout=600,
            capture_output=True, text=True,
            env=dict(os.environ, OMP_NUM_THREADS='1'))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert 'Running the model eagerly' not in proc.stderr + proc.stdout
        with open(work / 'out.json') as f:
            out[name] = json.load(f)
    assert out['compiled']['failed'] is False
    assert len(out['eager']['losses']) == 4
    assert out['compiled']['losses'] == pytest.approx(out['eager']['losses'],
                                                      rel=1e-5)
