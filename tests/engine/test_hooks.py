import os
import os.path as osp
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.runner import Runner

import gplq_mm  # noqa: F401
from gplq_mm.utils import mmengine_checkpoint_globals
from gplq_mm.utils.io import read_json
from tests.helpers import gplq_cfg, load_ckpt

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _student_state(path):
    state = load_ckpt(path)['state_dict']
    return {k: v for k, v in state.items() if k.startswith('student.')}


def test_one_run_gives_w4a4_checkpoint_that_tests(digits_root, fp_checkpoint,
                                                  tmp_path):
    cfg = gplq_cfg(digits_root, str(tmp_path), fp_checkpoint)
    cfg.default_hooks.logger.interval = 1  # the step means: logged iterations
    runner = Runner.from_cfg(cfg)
    runner.train()
    model = runner.model
    assert model.stage == 2 and bool(model.pca.fitted)
    # the Stage-1 curves: the mean learned activation step beside the losses
    hub = runner.message_hub.log_scalars
    assert {'train/loss_cls', 'train/loss_pca',
            'train/act_step_mean'} <= set(hub)
    assert 'train/weight_step_mean' not in hub  # gplq trains no weight step
    steps = hub['train/act_step_mean'].data[0]
    assert len(steps) == runner.iter and steps[0] != steps[-1]
    stats = read_json(tmp_path / 'gplq_stats.json')
    assert {'calibration_s', 'pca_s', 'stage1_s', 'stage2_s',
            'qwt_r2'} <= set(stats)
    assert stats['pca_dim'] % 32 == 0
    final = tmp_path / 'gplq_w4a4.pth'
    stage1 = load_ckpt(tmp_path / 'epoch_1.pth')['state_dict']
    assert int(stage1['gplq_stage']) == 1
    assert not any(k.startswith('teacher') for k in stage1)
    # Evaluate the final checkpoint as tools/test.py does: no FP checkpoint.
    test_cfg = gplq_cfg(digits_root, str(tmp_path / 'test'), None)
    test_cfg.load_from = str(final)
    tester = Runner.from_cfg(test_cfg)
    with mmengine_checkpoint_globals():
        metrics = tester.test()
    assert tester.model.stage == 2
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    assert torch.equal(tester.model(x), model(x))
    # the tester's top-1 is the trained model's on the same images
    correct = total = 0
    with torch.no_grad():
        for data in tester.test_dataloader:
            for s in model.test_step(data):
                correct += int(s.pred_label == s.gt_label)
                total += 1
    assert total == 64
    assert metrics['accuracy/top1'] == pytest.approx(100 * correct / total)
    # the checkpoint records what its steps mean; another bit width or
    # method is refused before anything is loaded or evaluated
    assert load_ckpt(final)['meta']['gplq'] == dict(
        method='gplq', w_bits=4, a_bits=4, attn_bits=4, patch_embed_bits=8,
        act_granularity='channel', attn_granularity='head',
        softmax_grid='uniform', deployable=False,
        relu_inputs='signed', deploy_rules='none')
    for kw, match in ((dict(quant_cfg=dict(w_bits=3, a_bits=3)),
                       r'w_bits=4 \(this config: 3\), a_bits=4 \(this '
                       r'config: 3\)'),
                      (dict(method='minmax-ptq'),
                       r"method='gplq' \(this config: 'minmax-ptq'\)")):
        bad = gplq_cfg(digits_root, str(tmp_path / 'bad'), None, **kw)
        bad.load_from = str(final)
        with pytest.raises(ValueError, match=match):
            with mmengine_checkpoint_globals():
                Runner.from_cfg(bad).test()
    # the right architecture with another number of classes
    bad = gplq_cfg(digits_root, str(tmp_path / 'bad'), None)
    bad.model.architecture.head.num_classes = 5
    bad.load_from = str(final)
    with pytest.raises(ValueError, match=r'student.head.layers.head.weight: '
                       r'\(10, 32\) in the checkpoint, \(5, 32\) in the '
                       'model'):
        with mmengine_checkpoint_globals():
            Runner.from_cfg(bad).test()


def test_dataset_too_small_fails_before_training(digits_root, fp_checkpoint,
                                                 tmp_path):
    cfg = gplq_cfg(digits_root, str(tmp_path), fp_checkpoint,
                   train_images=16, hook=dict())
    cfg.custom_hooks[0].update(calib_images=8, ptq_images=8, pca_images=500)
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match='pca_images=500 but the training '
                       'set has only 16 images'):
        runner.train()
    assert runner.iter == 0


DIST_WORKER = r'''
import os, sys, json, weakref, torch
sys.path.insert(0, {root!r})
from mmengine.runner import Runner
from mmengine.dist import all_gather_object, get_rank
import gplq_mm
from gplq_mm.utils import finish_launch, prepare_launch
from tests.helpers import gplq_cfg, gplq_det_cfg
if {task!r} == 'cls':
    cfg = gplq_cfg({data!r}, {work!r}, {ckpt!r}, train_images=64,
                   quant_cfg=dict(attn_init='minmax'))
    cfg.custom_hooks[0].update(calib_images=32, pca_images=64, ptq_images=32)
else:
    cfg = gplq_det_cfg({data!r}, {work!r}, {ckpt!r}, scope='full',
                       quant_cfg=dict(attn_init='minmax'))
    cfg.custom_hooks[0].update(calib_images=8, ptq_images=8)
cfg.train_dataloader.batch_size = {bs}
cfg.optim_wrapper.optimizer.lr = 0.0  # compare the statistics, not Adam noise
cfg.launcher = {launcher!r}
# tools/gpu_check.py runs these tests over NCCL on 2 GPUs
cfg.env_cfg.dist_cfg.backend = os.environ.get('GPLQ_TEST_DIST_BACKEND',
                                              'gloo')
prepare_launch(cfg)
runner = Runner.from_cfg(cfg)
runner.train()
model = getattr(runner.model, 'module', runner.model)
state = {{k: v.double().sum().item() for k, v in model.state_dict().items()}}
states = all_gather_object(state)
if get_rank() == 0:
    with open({work!r} + '/states.json', 'w') as f:
        json.dump(states, f)
# as tools/train.py ends: the DDP wrapper and the process group go before
# the interpreter's shutdown
wrapper = weakref.ref(runner.model)
del runner, model
finish_launch()
assert wrapper() is None, 'the model outlived finish_launch'
'''


def _launch(tmp_path, name, digits_root, fp_checkpoint, nproc, task='cls',
            batch=16):
    work = str(tmp_path / name)
    os.makedirs(work)
    script = tmp_path / f'{name}.py'
    script.write_text(DIST_WORKER.format(
        root=ROOT, data=digits_root, work=work, ckpt=fp_checkpoint,
        bs=batch // nproc, launcher='pytorch' if nproc > 1 else 'none',
        task=task))
    cmd = [sys.executable, str(script)]
    if nproc > 1:
        cmd = [sys.executable, '-m', 'torch.distributed.run',
               # --standalone: the rendezvous takes a port the OS picks
               '--standalone', f'--nproc_per_node={nproc}',
               str(script)]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(cmd, env=env, cwd=ROOT, timeout=600,
                          capture_output=True, text=True)
    # On failure, show what the processes printed (the launcher alone only
    # says that a child failed), stdout and stderr apart.
    assert proc.returncode == 0, (
        f'exit {proc.returncode}:\nstdout: {proc.stdout[-3000:]}\n'
        f'stderr: {proc.stderr[-3000:]}')
    return read_json(osp.join(work, 'states.json'))


def test_two_processes_match_one(digits_root, fp_checkpoint, tmp_path):
    """2 CPU processes (gloo), batch 8 each, against 1 process at batch 16:
    calibration, PCA, weight PTQ and QwT end identical on every rank and
    equal to the single process (min/max calibration and summed statistics
    are exact reductions). LR 0 keeps Adam's sign-like first steps from
    turning reduction-order rounding into weight differences that 4-bit
    rounding would then amplify."""
    (one, ) = _launch(tmp_path, 'one', digits_root, fp_checkpoint, 1)
    r0, r1 = _launch(tmp_path, 'two', digits_root, fp_checkpoint, 2)
    assert r0 == r1
    assert r0.keys() == one.keys()
    bad = [(k, r0[k], one[k]) for k in one
           if r0[k] != pytest.approx(one[k], rel=1e-4, abs=1e-5)]
    assert not bad
    assert any('qwt' in k and v != 0 for k, v in one.items())


def test_detector_two_processes_match_one(digit_coco_root, det_fp_checkpoint,
                                          tmp_path):
    """The same for Mask R-CNN, scope 'full' (calibration runs predict, so
    RPN / RoI quantizers see the same proposals in both)."""
    (one, ) = _launch(tmp_path, 'one', digit_coco_root, det_fp_checkpoint, 1,
                      task='det', batch=4)
    r0, r1 = _launch(tmp_path, 'two', digit_coco_root, det_fp_checkpoint, 2,
                     task='det', batch=4)
    assert r0 == r1
    bad = [(k, r0[k], one[k]) for k in one
           if r0[k] != pytest.approx(one[k], rel=1e-4, abs=1e-5)]
    assert not bad


def test_long_steps_log_progress(digits_root, fp_checkpoint, tmp_path):
    """Calibration, PCA, the Stage-2 data and QwT (block by block) log
    counts, rate and ETA."""
    cfg = gplq_cfg(digits_root, str(tmp_path), fp_checkpoint,
                   train_images=32)
    cfg.log_level = 'INFO'
    cfg.custom_hooks[0].update(calib_images=32, pca_images=32,
                               ptq_images=32)
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    Runner.from_cfg(cfg).train()
    log = Path(next(tmp_path.glob('*/*.log'))).read_text()
    for line in ('GPLQ calibration: 32/32 images on this process, ',
                 'GPLQ PCA: 32/32 images on this process, ',
                 'GPLQ Stage-2 data: 32/32 images on this process, ',
                 'QwT [1/2] backbone.layers.0: R^2=',
                 'QwT [2/2] backbone.layers.1: R^2='):
        assert line in log, line
    assert log.count('images/s, ETA 0s') == 3


NAN_WORKER = r'''
import sys
sys.path.insert(0, {root!r})
from mmengine.dist import get_rank
from mmengine.runner import Runner
import gplq_mm
from gplq_mm.utils import prepare_launch
from tests.helpers import gplq_cfg
cfg = gplq_cfg({data!r}, {work!r}, {ckpt!r}, train_images=64, max_epochs=2)
cfg.custom_hooks[0].update(calib_images=32, pca_images=64, ptq_images=32)
cfg.train_dataloader.batch_size = 8
cfg.launcher = 'pytorch'
prepare_launch(cfg)
runner = Runner.from_cfg(cfg)
model = runner.model.module
def blow_up(mod, args, out):  # rank 1 only, from the second epoch on
    return out * float('inf') if runner.epoch >= 1 and get_rank() == 1 \
        else out
model.student.backbone.layers[1].attn.proj.register_forward_hook(blow_up)
try:
    runner.train()
except FloatingPointError as e:
    with open({work!r} + f'/error_{{get_rank()}}.txt', 'w') as f:
        f.write(str(e))
    raise
'''


def test_one_ranks_non_finite_loss_stops_every_rank(digits_root,
                                                    fp_checkpoint, tmp_path):
    """2 gloo processes, a NaN on rank 1 only: both raise the same error at
    once (none waits in a collective until the timeout), before any update;
    the last checkpoint stays the last good one."""
    from gplq_mm.utils.checkpoint import check_checkpoint_file
    work = tmp_path / 'nan'
    work.mkdir()
    script = tmp_path / 'nan.py'
    script.write_text(NAN_WORKER.format(root=ROOT, data=digits_root,
                                        work=str(work), ckpt=fp_checkpoint))
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone',
         '--nproc_per_node=2', str(script)],
        env=dict(os.environ, OMP_NUM_THREADS='1'), cwd=ROOT, timeout=300,
        capture_output=True, text=True)
    assert proc.returncode != 0
    errors = [(work / f'error_{r}.txt').read_text() for r in (0, 1)]
    assert errors[0] == errors[1], errors
    # 64 images, 2 x 8 a step: 4 iterations an epoch, epoch 2 starts at 5
    assert errors[0].startswith('GPLQ: the Stage-1 loss is nan on rank 1 at '
                                'iteration 5; the first non-finite output is '
                                "backbone.layers.1.attn.proj's"), errors[0]
    check_checkpoint_file(str(work / 'epoch_1.pth'))
    assert not (work / 'epoch_2.pth').exists()


def test_non_finite_loss_names_iteration_and_layer(digits_root, fp_checkpoint,
                                                   tmp_path):
    cfg = gplq_cfg(digits_root, str(tmp_path), fp_checkpoint,
                   train_images=32, max_epochs=2)
    cfg.custom_hooks[0].update(pca_images=32)
    runner = Runner.from_cfg(cfg)
    proj = runner.model.student.backbone.layers[1].attn.proj
    calls = []

    def blow_up(mod, args, out):  # from the second epoch on (2 iters each)
        calls.append(1)
        return out * float('inf') if runner.epoch >= 1 else out

    proj.register_forward_hook(blow_up)
    with pytest.raises(FloatingPointError,
                       match=r'loss is nan at iteration 3; the first '
                       r'non-finite output is backbone\.layers\.1\.attn\.'
                       r'proj\'s\. Nothing was updated'):
        runner.train()
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())
    assert (tmp_path / 'epoch_1.pth').exists()
    assert not (tmp_path / 'epoch_2.pth').exists()


def test_empty_training_set_is_refused():
    from types import SimpleNamespace

    from gplq_mm.engine.steps import check_image_count
    runner = SimpleNamespace(train_dataloader=SimpleNamespace(dataset=[]))
    with pytest.raises(ValueError, match='the training set is empty'):
        check_image_count(runner, 'calib_images', 1)
