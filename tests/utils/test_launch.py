"""``--launcher slurm`` without CUDA, and tools/slurm_train.sh /
slurm_test.sh."""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from mmengine.config import Config

from gplq_mm.utils import prepare_launch
from gplq_mm.utils.io import read_json
from gplq_mm.utils.launch import _slurm_environ
from tests.helpers import gplq_cfg

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SLURM = dict(SLURM_PROCID='3', SLURM_NTASKS='8', SLURM_LOCALID='1',
             SLURM_NODELIST='node[01-02]')
DERIVED = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


def _scontrol(tmp_path, out='node01\nnode02', rc=0):
    """A stand-in ``scontrol`` on PATH that logs its arguments."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / 'scontrol'
    stub.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.log\n'
                    f'printf "{out}\\n"\nexit {rc}\n')
    stub.chmod(0o755)
    return str(bin_dir), tmp_path / 'scontrol.log'


@pytest.fixture
def slurm_env(monkeypatch, tmp_path):
    for k in DERIVED:
        monkeypatch.delenv(k, raising=False)
    for k, v in SLURM.items():
        monkeypatch.setenv(k, v)
    bin_dir, log = _scontrol(tmp_path)
    monkeypatch.setenv('PATH', bin_dir + os.pathsep + os.environ['PATH'])
    return log


def test_slurm_environ_as_mmengine_derives_it(slurm_env, monkeypatch):
    assert _slurm_environ() == dict(
        RANK='3', WORLD_SIZE='8', LOCAL_RANK='1', MASTER_ADDR='node01',
        MASTER_PORT='29500')
    assert slurm_env.read_text() == 'show hostname node[01-02]\n'
    monkeypatch.setenv('MASTER_PORT', '1234')
    assert _slurm_environ()['MASTER_PORT'] == '1234'
    # env_cfg.dist_cfg.port wins over the environment, as in mmengine
    assert _slurm_environ(port=4321)['MASTER_PORT'] == '4321'
    # a MASTER_ADDR of the user's is kept: scontrol is not asked
    monkeypatch.setenv('MASTER_ADDR', '10.0.0.7')
    slurm_env.unlink()
    assert _slurm_environ()['MASTER_ADDR'] == '10.0.0.7'
    assert not slurm_env.exists()


def test_slurm_without_srun_variables_is_refused(slurm_env, monkeypatch):
    monkeypatch.delenv('SLURM_NODELIST')
    monkeypatch.delenv('SLURM_LOCALID')
    with pytest.raises(ValueError, match='--launcher slurm needs the '
                       'variables srun sets; missing: SLURM_NODELIST, '
                       r'SLURM_LOCALID \(start the job with srun'):
        prepare_launch(Config(dict(launcher='slurm')))
    assert not dist.is_initialized()


def test_scontrol_failures_are_one_line(slurm_env, monkeypatch, tmp_path):
    (tmp_path / 'failing').mkdir()
    bad, _ = _scontrol(tmp_path / 'failing', out='no such node', rc=1)
    monkeypatch.setenv('PATH', bad + os.pathsep + os.environ['PATH'])
    with pytest.raises(RuntimeError, match=r"'scontrol show hostname "
                       r"node\[01-02\]' named no host \(exit 1: 'no such "
                       r"node'\); set MASTER_ADDR instead"):
        _slurm_environ()
    monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
    with pytest.raises(RuntimeError, match='cannot run .*set MASTER_ADDR'):
        _slurm_environ()


def test_with_cuda_nothing_changes(slurm_env, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    for launcher in ('slurm', 'pytorch'):
        cfg = Config(dict(launcher=launcher))
        before = dict(os.environ)
        prepare_launch(cfg)
        assert dict(os.environ) == before
        assert 'model_wrapper_cfg' not in cfg
        assert not dist.is_initialized()


PROBE = r'''
"""Records, at the end of the run, what this rank ended with."""
import json
import os

import torch.distributed as dist
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

import gplq_mm


@HOOKS.register_module()
class RankStateProbe(Hook):
    priority = 'LOWEST'

    def after_run(self, runner):
        model = getattr(runner.model, 'module', runner.model)
        rank = dist.get_rank()
        with open(os.path.join(runner.work_dir, f'rank{rank}.json'), 'w') as f:
            json.dump(dict(
                rank=rank, world_size=dist.get_world_size(),
                backend=dist.get_backend(),
                runner=[runner.rank, runner.world_size], iters=runner.iter,
                wrapper=type(runner.model).__name__, gplq_mm=gplq_mm.__file__,
                environ={k: os.environ[k] for k in
                         ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR')},
                state={k: v.double().sum().item()
                       for k, v in model.state_dict().items()}), f)
'''

# What srun gives each task. torchrun only starts the two tasks, with its
# store on a port the OS chose (no port is picked and released: no race);
# everything it sets that srun would not is removed, so the ranks, the world
# size and the master address come from the Slurm variables and scontrol.
SLURM_TASK = r'''
export SLURM_PROCID=$RANK SLURM_NTASKS=$WORLD_SIZE SLURM_LOCALID=$LOCAL_RANK
export SLURM_NODELIST='gplq-node[1]'
unset RANK WORLD_SIZE LOCAL_RANK MASTER_ADDR
exec "$PYTHON" tools/train.py "$CONFIG" --launcher slurm --work-dir "$WORK"
'''


def test_two_slurm_tasks_train_as_one_group(digits_root, fp_checkpoint,
                                            tmp_path):
    """tools/train.py --launcher slurm in 2 CPU tasks: one gloo group of 2
    (each rank trains half of each epoch's batches), both end with the same
    state, rank 0 writes the W4A4 checkpoint."""
    work = tmp_path / 'work'
    (tmp_path / 'slurm_probe.py').write_text(PROBE)
    cfg = gplq_cfg(digits_root, str(work), fp_checkpoint, train_images=64,
                   quant_cfg=dict(attn_init='minmax'))
    cfg.custom_hooks[0].update(calib_images=32, pca_images=64, ptq_images=32)
    cfg.custom_hooks.append(dict(type='RankStateProbe'))
    cfg.custom_imports = dict(imports=['gplq_mm', 'slurm_probe'])
    cfg.train_dataloader.batch_size = 8
    cfg.dump(str(tmp_path / 'cfg.py'))
    (tmp_path / 'task.sh').write_text(SLURM_TASK)
    bin_dir, scontrol_log = _scontrol(tmp_path, out='127.0.0.1')
    env = {k: v for k, v in os.environ.items()
           if not k.startswith('SLURM_') and k not in DERIVED}
    env.update(OMP_NUM_THREADS='1', PYTHON=sys.executable,
               CONFIG=str(tmp_path / 'cfg.py'), WORK=str(work),
               PATH=bin_dir + os.pathsep + os.environ['PATH'],
               PYTHONPATH=os.pathsep.join([ROOT, str(tmp_path)]))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
           '--nproc_per_node=2', '--no-python', 'bash',
           str(tmp_path / 'task.sh')]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, timeout=600,
                          capture_output=True, text=True)
    assert proc.returncode == 0, (
        f'exit {proc.returncode}:\nstdout: {proc.stdout[-3000:]}\n'
        f'stderr: {proc.stderr[-3000:]}')
    r0, r1 = (read_json(work / f'rank{r}.json') for r in (0, 1))
    for rank, r in enumerate((r0, r1)):
        assert (r['rank'], r['world_size'], r['backend']) == (rank, 2, 'gloo')
        assert r['runner'] == [rank, 2]
        assert r['environ'] == dict(RANK=str(rank), WORLD_SIZE='2',
                                    LOCAL_RANK=str(rank),
                                    MASTER_ADDR='127.0.0.1')
        assert r['wrapper'] == 'MMDistributedDataParallel'
        assert r['iters'] == 64 // (2 * 8)  # the sampler split the epoch
        assert r['gplq_mm'] == osp.join(ROOT, 'gplq_mm', '__init__.py')
    assert r0['state'] == r1['state']
    assert any('qwt' in k and v != 0 for k, v in r0['state'].items())
    assert scontrol_log.read_text().splitlines() == [
        'show hostname gplq-node[1]'] * 2
    assert (work / 'gplq_w4a4.pth').exists()


def _srun(tmp_path, script, args, **env):
    """Run a tools/slurm_*.sh with a stand-in ``srun`` that records its
    arguments, one a line, and PYTHONPATH."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / 'srun.log'
    (bin_dir / 'srun').write_text(
        f'#!/bin/sh\necho "$PYTHONPATH" > {log}\n'
        f'printf "%s\\n" "$@" >> {log}\n')
    (bin_dir / 'srun').chmod(0o755)
    run_env = {k: v for k, v in os.environ.items()
               if k not in ('GPUS', 'GPUS_PER_NODE', 'CPUS_PER_TASK',
                            'SRUN_ARGS', 'PYTHON')}
    run_env.update(PATH=str(bin_dir) + os.pathsep + os.environ['PATH'],
                   **env)
    path = osp.join(ROOT, 'tools', script)
    subprocess.run(['bash', path, *args], env=run_env, check=True,
                   capture_output=True, text=True)
    pythonpath, *argv = log.read_text().splitlines()
    assert pythonpath.startswith(osp.join(ROOT, 'tools', '..') + ':')
    return argv


@pytest.mark.parametrize('script', ['slurm_train.sh', 'slurm_test.sh'])
def test_slurm_scripts_parse(script):
    subprocess.run(['bash', '-n', osp.join(ROOT, 'tools', script)],
                   check=True)


def test_slurm_train_sh_calls_train_py_with_the_slurm_launcher(tmp_path):
    argv = _srun(tmp_path, 'slurm_train.sh',
                 ['part', 'job', 'cfg.py', 'work', '--cfg-options',
                  'model.checkpoint=/my ckpts/fp32.pth', '--amp'],
                 GPUS='2', GPUS_PER_NODE='4', CPUS_PER_TASK='3',
                 SRUN_ARGS='--time=10 --qos=low', PYTHON='py3')
    assert argv == [
        '-p', 'part', '--job-name=job', '--gres=gpu:4', '--ntasks=2',
        '--ntasks-per-node=4', '--cpus-per-task=3', '--kill-on-bad-exit=1',
        '--time=10', '--qos=low', 'py3', '-u',
        osp.join(ROOT, 'tools', 'train.py'), 'cfg.py', '--work-dir=work',
        '--launcher=slurm', '--cfg-options',
        'model.checkpoint=/my ckpts/fp32.pth', '--amp']


def test_slurm_test_sh_calls_test_py_with_the_slurm_launcher(tmp_path):
    argv = _srun(tmp_path, 'slurm_test.sh',
                 ['part', 'job', 'cfg.py', 'w4a4.pth', '--out', 'm.json'])
    assert argv == [
        '-p', 'part', '--job-name=job', '--gres=gpu:8', '--ntasks=8',
        '--ntasks-per-node=8', '--cpus-per-task=5', '--kill-on-bad-exit=1',
        'python', '-u', osp.join(ROOT, 'tools', 'test.py'), 'cfg.py',
        'w4a4.pth', '--launcher=slurm', '--out', 'm.json']
