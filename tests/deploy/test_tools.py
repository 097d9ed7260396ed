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
    check = summary['check']['model']
    assert check['parity']['images'] == 64
    assert check['parity']['agreement'] >= 0.995
    assert check['kernels']['integer'] > 0
    # the same file in OpenVINO: at f32 it computes onnxruntime's logits;
    # its Linear layers run on int8 kernels
    ov = check['parity_openvino-f32']
    assert ov['images'] == 64 and ov['agreement'] == 1.0, ov
    assert ov['rel_l2'] < 1e-4, ov
    assert check['parity_openvino']['images'] == 64  # its default, bf16
    assert check['openvino_kernels']['FullyConnected'].get('i8', 0) > 0
    sizes = summary['bytes']
    assert sizes['storage'] < sizes['runtime'] < sizes['fp32']
    metrics = {}
    for name, *model in (('torch', ckpt),
                         ('onnx', osp.join(out, 'gplq-deploy_w4a4.onnx')),
                         ('int4', osp.join(out,
                                           'gplq-deploy_w4a4_int4.onnx')),
                         ('openvino', osp.join(out, 'gplq-deploy_w4a4.onnx'),
                          '--runtime', 'openvino-f32'),
                         ('openvino_default', osp.join(
                             out, 'gplq-deploy_w4a4.onnx'),
                          '--runtime', 'openvino')):
        path = osp.join(out, f'{name}.json')
        proc = _tool('tools/test.py', cfg, *model, '--out', path,
                     '--work-dir', osp.join(out, name))
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics[name] = read_json(path)['accuracy/top1']
    # 64 val images: one image is 1.5625 points
    assert abs(metrics['onnx'] - metrics['torch']) <= 1.6
    assert metrics['int4'] == metrics['onnx']
    assert metrics['openvino'] == metrics['onnx']
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
    # a runtime is for an export, not a checkpoint
    proc = _tool('tools/test.py', osp.join(deploy_run, 'cfg.py'),
                 osp.join(deploy_run, 'gplq-deploy_w4a4.pth'), '--runtime',
                 'openvino')
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        'error: --runtime applies to an export (.onnx, a detector export), '
        'not a checkpoint')


@pytest.fixture(scope='module')
def det_deploy_run(digit_coco_root, det_fp_checkpoint, tmp_path_factory):
    """A GPLQ W4A4 run of the demo detector, deployable, scope full."""
    from tests.helpers import gplq_det_cfg
    work = str(tmp_path_factory.mktemp('det_deploy'))
    cfg = gplq_det_cfg(digit_coco_root, work, det_fp_checkpoint,
                       scope='full')
    cfg.model.method = 'gplq-deploy'
    cfg.dump(osp.join(work, 'cfg.py'))
    runner = Runner.from_cfg(cfg)
    runner.train()
    del runner
    return work


def _maps(path):
    m = read_json(path)
    return m['coco/bbox_mAP'], m['coco/segm_mAP']


def test_detector_export_check_and_evaluation(det_deploy_run):
    work = det_deploy_run
    cfg, ckpt = osp.join(work, 'cfg.py'), osp.join(work,
                                                   'gplq-deploy_w4a4.pth')
    out = osp.join(work, 'onnx')
    proc = _tool('tools/export.py', cfg, ckpt, '--out-dir', out, '--check',
                 '4', '--cfg-options', 'log_level=INFO')
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_json(osp.join(out, 'gplq-deploy_w4a4_export.json'))
    assert set(summary['check']) == {'trunk_128x128', 'bbox0', 'mask0'}
    for name, check in summary['check'].items():
        assert check['kernels']['integer'] > 0, name
        assert all(f['why'] != 'a quantized layer on a float kernel'
                   for f in check['kernels']['float_nodes']), name
        assert check['codes']['same_input_min'] >= 0.999, (name, check)
        # OpenVINO runs the same files on its int8 kernels
        ov = check['openvino_kernels']
        assert sum(p.get('u8', 0) + p.get('i8', 0)
                   for p in ov.values()) > 0, (name, ov)
    # each float kernel is logged with why (the trunk's: QwT compensators
    # only; every conv and attention matmul is integer)
    log = proc.stdout + proc.stderr
    trunk = summary['check']['trunk_128x128']['kernels']['float_nodes']
    assert all(f['why'] == 'QwT compensator (FP32 by design)'
               for f in trunk), trunk
    for name, check in summary['check'].items():
        for f in check['kernels']['float_nodes']:
            assert (f'{name}:   float {f["op"]} {f["node"]} '
                    f'({f["module"]}): {f["why"]}') in log, f
    maps = {}
    for name, args in (
            ('torch', (cfg, ckpt)), ('onnx', (cfg, out)),
            ('int4', (cfg, out, '--form', 'storage')),
            ('openvino', (cfg, out, '--runtime', 'openvino')),  # it runs
            ('onnx_fp32', (cfg, out, '--form', 'fp32')),
            # the same checkpoint, every quantizer off
            ('torch_fp32', (cfg, ckpt, '--cfg-options',
                            'model.internal_fp32=True'))):
        path = osp.join(out, f'{name}.json')
        proc = _tool('tools/test.py', *args, '--out', path, '--work-dir',
                     osp.join(out, name))
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
        maps[name] = _maps(path)
    assert maps['int4'] == maps['onnx']
    assert maps['onnx_fp32'] == pytest.approx(maps['torch_fp32'], abs=1e-3)
    assert maps['onnx'] == pytest.approx(maps['torch'], abs=0.03), maps
    # in f32 the box head's outputs are onnxruntime's (measured 0.35%)
    assert summary['check']['bbox0']['parity_openvino-f32'][
        'rel_l2[0]'] < 0.02


def test_detector_export_refuses_bad_input_in_one_line(det_deploy_run):
    work = det_deploy_run
    cfg = osp.join(work, 'cfg.py')
    for args, message in (
            ((osp.join(work, 'gplq-deploy_stage1.pth'), ),
             'Stage-1 checkpoint'),
            ((osp.join(work, 'gplq-deploy_w4a4.pth'), '--shape', '64', '64',
              '--shape', '64', '64'), 'canvases [(64, 64), (64, 64)]')):
        proc = _tool('tools/export.py', cfg, *args, '--out-dir',
                     osp.join(work, 'refused'))
        assert proc.returncode == 1, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith('error: ') and message in last, last
        assert 'Traceback' not in proc.stderr
    proc = _tool('tools/test.py', cfg, osp.join(work, 'refused'))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        'error: ') and 'expected one *_detector.json' in proc.stderr
