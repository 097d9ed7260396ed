"""tools/export.py and tools/test.py on an exported classifier, end to end
on a GPLQ run in deployable mode."""
import os
import os.path as osp
import subprocess
import sys

import pytest
from mmengine.runner import Runner

import gplq_mm  # noqa: F401
from gplq_mm.utils.io import read_json
from tests.helpers import gplq_cfg

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _tool(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def deploy_run(digits_root, fp_checkpoint, tmp_path_factory):
    work = str(tmp_path_factory.mktemp('deploy'))
    cfg = gplq_cfg(digits_root, work, fp_checkpoint, method='gplq-deploy')
    cfg.dump(osp.join(work, 'cfg.py'))
    runner = Runner.from_cfg(cfg)
    runner.train()
    del runner
    return work


def test_export_then_evaluate_the_onnx_model_like_the_checkpoint(deploy_run):
    cfg, ckpt = osp.join(deploy_run, 'cfg.py'), osp.join(
        deploy_run, 'gplq-deploy_w4a4.pth')
    out = osp.join(deploy_run, 'onnx')
    proc = _tool('tools/export.py', cfg, ckpt, '--out-dir', out, '--check',
                 '64')
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_json(osp.join(out, 'gplq-deploy_w4a4_export.json'))
    assert summary['parity']['images'] == 64
    assert summary['parity']['agreement'] >= 0.995
    sizes = summary['bytes']
    assert sizes['storage'] < sizes['runtime'] < sizes['fp32']
    metrics = {}
    for name, model in (('torch', ckpt),
                        ('onnx', osp.join(out, 'gplq-deploy_w4a4.onnx')),
                        ('int4', osp.join(out, 'gplq-deploy_w4a4_int4.onnx'))):
        path = osp.join(out, f'{name}.json')
        proc = _tool('tools/test.py', cfg, model, '--out', path,
                     '--work-dir', osp.join(out, name))
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics[name] = read_json(path)['accuracy/top1']
    # 64 val images: one image is 1.5625 points
    assert abs(metrics['onnx'] - metrics['torch']) <= 1.6
    assert metrics['int4'] == metrics['onnx']
    # under a launcher (dist_test.sh): 2 gloo processes, half the set each
    path = osp.join(out, 'onnx_2proc.json')
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone',
         '--nproc_per_node=2', 'tools/test.py', cfg,
         osp.join(out, 'gplq-deploy_w4a4.onnx'), '--launcher', 'pytorch',
         '--out', path, '--work-dir', osp.join(out, 'onnx_2proc')],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_json(path)['accuracy/top1'] == metrics['onnx']


def test_export_refuses_a_stage1_checkpoint_in_one_line(deploy_run):
    proc = _tool('tools/export.py', osp.join(deploy_run, 'cfg.py'),
                 osp.join(deploy_run, 'gplq-deploy_stage1.pth'), '--out-dir',
                 osp.join(deploy_run, 'refused'))
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert 'Stage-1 checkpoint' in last and last.startswith('error: ')
    assert 'Traceback' not in proc.stderr
    assert not any(f.endswith('.onnx')
                   for f in os.listdir(osp.join(deploy_run, 'refused')))
