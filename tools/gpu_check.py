"""`make gpu-check`: what only a GPU machine can check, one line per check
(PASS / FAIL / SKIP with seconds), under 8 minutes on one GPU. Each check's
full output goes to work_dirs/gpu_check/<check>.log.

    python tools/gpu_check.py [--only NAME ...]

Checks: the CUDA tests; one Stage-1 iteration of Swin-T (random weights)
under CUDA autocast in fp16 (with a GradScaler) and in bf16; tools/export.py
and tools/test.py of a deployable demo model on the CUDA host; mmcv's
RoIAlign and NMS on CUDA against CPU; 2-process NCCL == 1 process (when 2
GPUs are visible); tools/bench_speed.py --compile (bf16, Swin-T).
"""
import argparse
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
OUT = 'work_dirs/gpu_check'
DEMO = 'work_dirs/gpu_check/demo'
PY = sys.executable


def _sh(*args, env=None) -> str:
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})))
    if proc.returncode:
        raise RuntimeError(f'exit {proc.returncode}\n{proc.stdout}\n'
                           f'{proc.stderr}')
    return proc.stdout + proc.stderr


def cuda_tests() -> str:
    out = _sh(PY, '-m', 'pytest', '-q', '-rs', 'tests/quant', '-k', 'cuda')
    if 'skipped' in out.splitlines()[-1]:
        raise RuntimeError('CUDA tests were skipped:\n' + out)
    return out


def _amp(dtype_name: str) -> str:
    import torch
    from mmengine.config import Config
    from mmengine.registry import MODELS, DefaultScope
    from mmpretrain.structures import DataSample

    import gplq_mm  # noqa: F401
    cfg = Config.fromfile('configs/gplq/gplq_swin-t_8xb16_w4a4_in1k.py')
    cfg.model.checkpoint = None
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model).cuda()
    x = torch.randn(8, 3, 224, 224, device='cuda')
    samples = [DataSample().set_gt_label(i) for i in range(8)]
    model.calibrate([dict(inputs=x)])
    model.prepare([dict(inputs=torch.randn(64, 3, 224, 224, device='cuda'))])
    model.train()
    dtype = getattr(torch, dtype_name)
    scaler = torch.amp.GradScaler('cuda', enabled=dtype == torch.float16)
    with torch.autocast('cuda', dtype=dtype):
        losses = model.loss(x, samples)
    total = sum(losses.values())
    if not torch.isfinite(total):
        raise RuntimeError(f'non-finite loss {losses}')
    scaler.scale(total).backward()
    bad = [n for n, p in model.named_parameters()
           if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad and dtype != torch.float16:  # fp16: the scaler skips such a step
        raise RuntimeError(f'non-finite gradients: {bad[:3]}')
    return f'losses {dict((k, float(v)) for k, v in losses.items())}'


def export_on_cuda_host() -> str:
    """A deployable demo model, trained briefly on CUDA, exported and run
    by tools/export.py and tools/test.py on this host."""
    from gplq_mm.demo.data import make_digits
    if not osp.isfile('data/digits/meta/val.txt'):
        make_digits('data/digits')
    cfg = 'configs/demo/gplq_vit-tiny_digits_w4a4_deploy.py'
    fp = f'{DEMO}/fp'
    _sh(PY, 'tools/train.py', 'configs/demo/vit-tiny_digits_fp.py',
        '--work-dir', fp, '--cfg-options', 'train_cfg.max_epochs=2')
    _sh(PY, 'tools/train.py', cfg, '--work-dir', DEMO, '--cfg-options',
        f'model.checkpoint={fp}/epoch_2.pth', 'train_cfg.max_epochs=1')
    ckpt = f'{DEMO}/gplq-deploy_w4a4.pth'
    out = _sh(PY, 'tools/export.py', cfg, ckpt, '--check', '64')
    out += _sh(PY, 'tools/test.py', cfg, ckpt.replace('.pth', '.onnx'))
    return out


def mmcv_ops() -> str:
    import torch
    from mmcv.ops import RoIAlign, nms
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 8, 32, 32, generator=g)
    rois = torch.tensor([[0, 1., 1., 20., 20.], [1, 4., 2., 30., 17.]])
    align = RoIAlign((7, 7), 0.5, 2, aligned=True)
    a, b = align(feat, rois), align(feat.cuda(), rois.cuda()).cpu()
    if not torch.allclose(a, b, atol=1e-5):
        raise RuntimeError(f'RoIAlign CUDA != CPU: {(a - b).abs().max()}')
    boxes = torch.rand(50, 2, generator=g) * 50
    boxes = torch.cat([boxes, boxes + 10], dim=1)
    scores = torch.rand(50, generator=g)
    _, keep = nms(boxes, scores, 0.5)
    _, keep_cuda = nms(boxes.cuda(), scores.cuda(), 0.5)
    if not torch.equal(keep, keep_cuda.cpu()):
        raise RuntimeError('nms CUDA != CPU')
    return f'RoIAlign max diff {(a - b).abs().max():.2e}; nms kept {len(keep)}'


def nccl_two_processes() -> str:
    import torch
    if torch.cuda.device_count() < 2:
        raise LookupError('1 GPU visible')
    return _sh(PY, '-m', 'pytest', '-q', 'tests/engine/test_hooks.py', '-k',
               'two_processes', env=dict(GPLQ_TEST_DIST_BACKEND='nccl'))


def bench_speed() -> str:
    return _sh(PY, 'tools/bench_speed.py', '--compile', '--precisions',
               'bf16', '--models', 'swin-t')


CHECKS = {'cuda-tests': cuda_tests,
          'amp-fp16': lambda: _amp('float16'),
          'amp-bf16': lambda: _amp('bfloat16'),
          'export-on-cuda-host': export_on_cuda_host,
          'mmcv-ops-cuda': mmcv_ops,
          'nccl-2-processes': nccl_two_processes,
          'bench-speed-compile': bench_speed}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--only', nargs='+', choices=list(CHECKS))
    args = p.parse_args()
    os.chdir(ROOT)
    os.makedirs(OUT, exist_ok=True)
    import torch
    if not torch.cuda.is_available():
        sys.exit('gpu_check: torch sees no CUDA GPU; nothing to check here')
    print(f'gpu_check: {torch.cuda.get_device_name(0)}, torch '
          f'{torch.__version__}, CUDA {torch.version.cuda}', flush=True)
    failed = 0
    for name in args.only or CHECKS:
        t = time.time()
        try:
            out, status = CHECKS[name](), 'PASS'
        except LookupError as e:
            out, status = str(e), 'SKIP'
        except Exception as e:  # noqa: BLE001  one line per check, go on
            out, status = f'{type(e).__name__}: {e}', 'FAIL'
            failed += 1
        with open(f'{OUT}/{name}.log', 'w') as f:
            f.write(out)
        last = out.strip().splitlines()[-1][:160] if out.strip() else ''
        print(f'{status} {name} ({time.time() - t:.0f}s) {last}', flush=True)
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
