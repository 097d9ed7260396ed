"""What the demo and benchmark tools share: the repository's demo configs,
the float models they start from, and running a tool as its own process.

The configs live in the repository (``configs/demo/``), so these helpers
work from a source checkout (``pip install -e .``), as the tools do.
"""
import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import Dict, Optional, Sequence, Tuple

from .data import make_digit_coco, make_digits

__all__ = ['ROOT', 'WORK', 'CLS_FP_CFG', 'CLS_GPLQ_CFG', 'DET_FP_CFG',
           'DET_GPLQ_CFG', 'METRIC_NAMES', 'TASKS', 'run', 'train',
           'evaluate', 'bench_dir', 'write_results', 'fp_model',
           'cls_fp_model', 'det_fp_model']

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
WORK = 'work_dirs/demo'
CLS_FP_CFG = 'configs/demo/vit-tiny_digits_fp.py'
CLS_GPLQ_CFG = 'configs/demo/gplq_vit-tiny_digits_w4a4.py'
DET_FP_CFG = 'configs/demo/mask-rcnn_swin-tiny_digits_fp.py'
DET_GPLQ_CFG = {
    'backbone': 'configs/demo/gplq_mask-rcnn_swin-tiny_digits_w4a4.py',
    'full': 'configs/demo/gplq_mask-rcnn_swin-tiny_digits_w4a4_full.py',
}

# the evaluators' keys as the result tables name them
METRIC_NAMES = {'accuracy/top1': 'top-1', 'coco/bbox_mAP': 'box AP',
                'coco/segm_mAP': 'mask AP'}


def run(step: str, args: Sequence[str]) -> Tuple[float, float]:
    """Run ``python <args>`` from the repository root in its own process;
    exit on failure; return (wall s, peak RSS MiB)."""
    print(f'\n==> {step}: {" ".join(args)}', flush=True)
    t = time.time()
    proc = subprocess.Popen([sys.executable] + args, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        sys.exit(f'demo: step "{step}" failed (exit {code})')
    return time.time() - t, usage.ru_maxrss / 1024


def train(work: str, cfg: str, fp_ckpt: str, final: str,
          options: Sequence[str] = (), step: Optional[str] = None
          ) -> Optional[Tuple[float, float]]:
    """``tools/train.py cfg`` into ``work``, from the FP32 checkpoint, with
    ``--cfg-options``; skipped (None) when ``work/final`` (the run's final
    checkpoint, :func:`~gplq_mm.models.methods.checkpoint_name`) exists,
    else its (wall s, peak RSS MiB)."""
    if osp.isfile(osp.join(work, final)):
        return None
    return run(step or f'train {work}', [
        'tools/train.py', cfg, '--work-dir', work, '--cfg-options',
        f'model.checkpoint={fp_ckpt}', *options])


def evaluate(out: str, name: str, cfg: str, ckpt: str,
             options: Sequence[str] = (),
             metrics: Optional[Sequence[str]] = None,
             reuse: bool = False,
             args: Sequence[str] = ()) -> Dict[str, float]:
    """``tools/test.py cfg ckpt *args`` with ``--cfg-options``, its metrics
    written to ``out/eval_<name>.json`` (reused when ``reuse`` and
    present); returns them (``metrics`` only, when given), with the wall
    time and peak RSS of the process as ``test_s`` / ``test_peak_rss_mb``
    when it ran."""
    path = f'{out}/eval_{name}.json'
    cost = {}
    if not (reuse and osp.isfile(path)):
        wall, rss = run(f'test {name}', [
            'tools/test.py', cfg, ckpt, *args, '--out', path, '--work-dir',
            f'{out}/test_{name}'] + (
                ['--cfg-options', *options] if options else []))
        cost = dict(test_s=wall, test_peak_rss_mb=rss)
    with open(path) as f:
        m = json.load(f)
    return {**{k: m[k] for k in (metrics or m)}, **cost}


def bench_dir(task: str, method: str, bits: int,
              out: Optional[str] = None) -> str:
    """The work dir of ``tools/benchmark.py``'s run of ``method`` at
    W``bits``A``bits`` (under ``out``, default ``work_dirs/bench/<task>``),
    which the ablations reuse."""
    return f'{out or f"work_dirs/bench/{task}"}/{method}_w{bits}a{bits}'


def write_results(out: str, lines: list, rows: list) -> None:
    """Print the markdown table ``lines`` and write it to
    ``<out>/results.md``, ``rows`` to ``<out>/results.json``."""
    table = '\n'.join(lines)
    print('\n' + table)
    with open(f'{out}/results.md', 'w') as f:
        f.write(table + '\n')
    with open(f'{out}/results.json', 'w') as f:
        json.dump(rows, f, indent=2)
    print(f'\nwritten: {out}/results.md, {out}/results.json')


def fp_model(cost: dict, data_file: str, make_data, step: str, cfg: str,
              work_dir: str, last_epoch: int) -> str:
    """Make the dataset when ``data_file`` is missing and train the float
    model when its last checkpoint is; return that checkpoint."""
    os.makedirs(WORK, exist_ok=True)
    if not osp.isfile(data_file):
        print('==> dataset:', make_data())
    fp_ckpt = f'{work_dir}/epoch_{last_epoch}.pth'
    if not osp.isfile(fp_ckpt):
        cost['FP32 training'] = run(step, ['tools/train.py', cfg,
                                           '--work-dir', work_dir])
    return fp_ckpt


def cls_fp_model(cost: dict) -> str:
    """The digits dataset and the float ViT (made when missing); returns
    the checkpoint. Paths are relative to :data:`ROOT`."""
    return fp_model(cost, 'data/digits/meta/val.txt',
                     lambda: make_digits('data/digits'), 'train FP32 ViT',
                     CLS_FP_CFG, f'{WORK}/fp', 60)


def det_fp_model(cost: dict) -> str:
    """The digit-canvas COCO set and the float detector (made when
    missing); returns the checkpoint."""
    return fp_model(cost, 'data/digit_coco/annotations/instances_val.json',
                     lambda: make_digit_coco('data/digit_coco'),
                     'train FP32 Mask R-CNN', DET_FP_CFG, f'{WORK}/det_fp',
                     24)


# The tasks of the benchmark and the ablations: configs, float model,
# metrics, and how each metric is printed.
TASKS = dict(
    cls=dict(fp_cfg=CLS_FP_CFG, cfg=CLS_GPLQ_CFG, fp_model=cls_fp_model,
             metrics=('accuracy/top1', ), fmt='{:.2f}', scale=1),
    det=dict(fp_cfg=DET_FP_CFG, cfg=DET_GPLQ_CFG['full'],
             fp_model=det_fp_model,
             metrics=('coco/bbox_mAP', 'coco/segm_mAP'), fmt='{:.1f}',
             scale=100))
