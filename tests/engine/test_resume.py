"""A run killed (SIGKILL) mid-epoch, or during Stage 2's QwT fit, and resumed
with ``tools/train.py --resume`` ends exactly where the uninterrupted run
ends: the same Stage-1 and final state_dicts, bit for bit, and the same
top-1. The runs go through tools/train.py and the recipe, as a user's do."""
import json
import os
import os.path as osp
import signal
import subprocess
import sys

import pytest
import torch

from tests.helpers import fp_cfg, load_ckpt

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# 48 images at batch 8, 2 epochs: 12 iterations, a checkpoint every 4.
CONFIG = '''
_base_ = ['./fp.py']
from gplq_mm.recipes import classification  # noqa: E402

globals().update(classification(
    _base_, checkpoint={ckpt!r}, lr=1e-3, epochs=2, batch_size=8,
    calib_images=16, pca_images=32, ptq_images=16, checkpoint_interval=4,
    log_interval=None))
# as mmpretrain's default runtime: unseeded (the run draws its seed), and the
# host's augmentation and drop_path draw random numbers;
randomness = dict(seed=None)
log_level = 'INFO'
model['architecture']['backbone']['drop_path_rate'] = 0.2
# two persistent workers: which worker loads a sample must not matter
train_dataloader['num_workers'] = 2
train_dataloader['persistent_workers'] = True
train_dataloader['dataset'] = dict(pipeline=[
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=16, crop_ratio_range=(0.6, 1.0)),
    dict(type='RandomFlip', prob=0.5), dict(type='PackInputs')])
custom_imports = dict(imports=['gplq_mm', 'kill_at'],
                      allow_failed_imports=False)
custom_hooks = custom_hooks + [dict(type='KillAt')]
'''

# A test hook: SIGKILL this process right after the training iteration
# KILL_AT=iter:<n> (after the checkpoint hook), or at the first block
# forward of Stage 2 (KILL_AT=qwt: inside QwT's fit).
KILLER = '''
import os, signal
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class KillAt(Hook):
    priority = 'LOWEST'

    def __init__(self):
        self.at = os.environ.get('KILL_AT', '')

    def before_train(self, runner):
        model = runner.model

        def in_stage2(*args):
            if model.stage == 2:
                _kill()

        if self.at == 'qwt':
            model.student.backbone.layers[-1].register_forward_hook(in_stage2)

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if self.at == f'iter:{runner.iter + 1}':
            _kill()
'''


@pytest.fixture(scope='module')
def config(digits_root, fp_checkpoint, tmp_path_factory):
    d = tmp_path_factory.mktemp('resume_cfg')
    fp_cfg(digits_root, str(d), train_images=48).dump(str(d / 'fp.py'))
    (d / 'gplq.py').write_text(CONFIG.format(ckpt=fp_checkpoint))
    (d / 'kill_at.py').write_text(KILLER)
    return d


def _train(config, work, *args, kill=None, expect=0):
    env = dict(os.environ, PYTHONPATH=f'{config}{os.pathsep}{ROOT}',
               KILL_AT=kill or '', OMP_NUM_THREADS='2')
    proc = subprocess.run(
        [sys.executable, 'tools/train.py', str(config / 'gplq.py'),
         '--work-dir', str(work), *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _last_top1(work):
    """The last top-1 the run's visualizer logged (the final W4A4's)."""
    runs = sorted(p for p in os.listdir(work) if osp.isdir(osp.join(work, p)))
    with open(osp.join(work, runs[-1], 'vis_data', 'scalars.json')) as f:
        return [json.loads(x) for x in f if 'accuracy/top1' in x][-1][
            'accuracy/top1']


def _assert_same_run(a, b):
    for name in ('gplq_stage1.pth', 'gplq_w4a4.pth'):
        sa = load_ckpt(a / name)['state_dict']
        sb = load_ckpt(b / name)['state_dict']
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert _last_top1(a) == _last_top1(b)


@pytest.fixture(scope='module')
def killed_mid_epoch(config, tmp_path_factory):
    """Killed after iteration 10 (epoch 2, batch 4 of 6; the last checkpoint
    is iteration 8's), then resumed. Returns (work dir, seed, log)."""
    work = tmp_path_factory.mktemp('killed')
    _train(config, work, kill='iter:10', expect=-signal.SIGKILL)
    assert sorted(p for p in os.listdir(work) if p.endswith('.pth')) == [
        'iter_8.pth']
    seed = load_ckpt(work / 'iter_8.pth')['meta']['seed']
    log = _train(config, work, '--resume')
    return work, seed, log


@pytest.fixture(scope='module')
def uninterrupted(config, killed_mid_epoch, tmp_path_factory):
    """The same run, not interrupted, with the seed the killed run drew."""
    work = tmp_path_factory.mktemp('whole')
    _train(config, work, '--cfg-options',
           f'randomness.seed={killed_mid_epoch[1]}')
    return work


def test_killed_mid_epoch_resumes_exactly(killed_mid_epoch, uninterrupted):
    work, _, log = killed_mid_epoch
    assert 'epoch 2 resumes at batch 3/6' in log
    assert 'calibration skipped' in log
    _assert_same_run(uninterrupted, work)


def test_killed_in_qwt_resumes_into_stage2(config, killed_mid_epoch,
                                           uninterrupted, tmp_path_factory):
    work = tmp_path_factory.mktemp('killed_qwt')
    seed = ('--cfg-options', f'randomness.seed={killed_mid_epoch[1]}')
    _train(config, work, *seed, kill='qwt', expect=-signal.SIGKILL)
    assert not (work / 'gplq_w4a4.pth').exists()
    log = _train(config, work, '--resume', *seed)
    assert 'resumed epoch: 1, iter: 12' in log  # Stage 1 is not redone
    assert 'resumes at batch' not in log
    _assert_same_run(uninterrupted, work)
