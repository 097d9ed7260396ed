"""`make demo-transfer`: what the quantized backbone still knows, on data
none of its training saw (the paper's Table 1 claim, on a proxy that runs
here).

1. writes the transfer data (gplq_mm.demo.transfer): upstream digits 0-5;
   downstream digits 6-9 and MNIST 6-9, unseen by every step below;
2. trains the upstream FP32 ViT (configs/demo/transfer/), a random-init
   copy (floor) and a deliberately drifted FP32 copy (positive control);
3. quantizes it with every method at W4A4 and W3A3 through tools/train.py
   (configs/demo/transfer/gplq_vit-tiny_digits0-5_w4a4.py, one switch
   apart), `gplq`, `qat-w4a4` and the long QAT with 3 seeds at W4A4;
4. for each checkpoint: upstream top-1, internal FP32 (quantizers off),
   weight drift from FP32, and linear probes of the frozen backbone
   (full and 1 / 4 / 16-shot, 3 draws) on each downstream set; prints one
   table, writes work_dirs/demo/transfer/results.{md,json}.

Finished runs and probes are reused (--force redoes everything).
"""
import argparse
import os
import os.path as osp
import re
import shutil
import time

import numpy as np

from gplq_mm.demo.runs import ROOT, fp_model, run, train, write_results
from gplq_mm.demo.transfer import SETS, SHOTS, make_transfer_data
from gplq_mm.models.methods import checkpoint_name, stage1_name
from gplq_mm.utils.io import file_sha256, read_json, write_json

WORK = 'work_dirs/demo/transfer'
CFG_DIR = 'configs/demo/transfer'
FP_CFG = f'{CFG_DIR}/vit-tiny_digits0-5_fp.py'
GPLQ_CFG = f'{CFG_DIR}/gplq_vit-tiny_digits0-5_w4a4.py'
DRIFT_CFG = f'{CFG_DIR}/vit-tiny_digits0-5_drifted.py'
# the long direct QAT, shaped like the paper's QAT baselines: many epochs
# at the FP32 training LR (configs/demo/vit-tiny_digits_fp.py: 2e-3)
LONG_QAT = ['train_cfg.max_epochs=15', 'train_cfg.val_interval=15',
            'optim_wrapper.optimizer.lr=2e-3']
# (row name, training method, extra options, seeds at W4A4)
METHODS = (('minmax-ptq', 'minmax-ptq', [], 1),
           ('repq-ptq', 'repq-ptq', [], 1),
           ('qat-w4a4 (1 ep budget)', 'qat-w4a4', [], 3),
           ('qat-w4a4 long (15 ep, LR 2e-3)', 'qat-w4a4', LONG_QAT, 3),
           ('gplq-no-qwt', 'gplq', [], 3),
           ('gplq', 'gplq', [], 3),
           ('gplq-deploy', 'gplq-deploy', [], 1))
COLUMNS = ['upstream', 'internal_fp32', 'drift_mae'] + [
    f'{s}/{k}' for s in SETS for k in ['full'] + [f'k{n}' for n in SHOTS]]


def _random_init(path: str) -> str:
    """The upstream architecture at its random initialization (seed 0)."""
    if not osp.isfile(path):
        import torch
        from mmengine.config import Config
        from mmengine.registry import MODELS, DefaultScope
        torch.manual_seed(0)
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            model = MODELS.build(Config.fromfile(FP_CFG).model)
        model.init_weights()
        torch.save(dict(state_dict=model.state_dict(), meta={}), path)
    return path


def _probe(name: str, source: str, ckpt: str, fp_ckpt: str,
           latent: str = None, pixels: bool = False,
           use_qwt: bool = True) -> dict:
    """One checkpoint's row, reused while the checkpoint is unchanged.
    The drift is measured on ``latent`` (default ``ckpt``)."""
    from gplq_mm.demo.transfer import checkpoint_row, latent_drift
    path = f'{WORK}/probe_{name}.json'
    sha = file_sha256(ckpt)
    if osp.isfile(path):
        row = read_json(path)
        if row.get('sha256') == sha:
            return row
    t = time.time()
    row = checkpoint_row(source, ckpt, pixels=pixels, use_qwt=use_qwt)
    row['drift_mae'] = None if pixels else latent_drift(
        source, latent or ckpt, FP_CFG, fp_ckpt)
    row.update(sha256=sha, probe_s=time.time() - t)
    write_json(row, path)
    print(f'==> probed {name} in {row["probe_s"]:.1f}s', flush=True)
    return row


def _cell(values) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return '-'
    if len(vals) == 1:
        return f'{vals[0]:.1f}' if vals[0] >= 0.05 else f'{vals[0]:.4f}'
    m, sd = float(np.mean(vals)), float(np.std(vals, ddof=1))
    return (f'{m:.1f} ± {sd:.1f}' if abs(m) >= 0.05 else
            f'{m:.4f} ± {sd:.4f}')


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--force', action='store_true', help='redo every step')
    p.add_argument('--bits', nargs='+', type=int, default=[4, 3])
    args = p.parse_args()
    os.chdir(ROOT)
    if args.force:
        shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK, exist_ok=True)
    # every process's wall time, kept across reruns (reused steps keep theirs)
    cost_path = f'{WORK}/costs.json'
    costs = read_json(cost_path) if osp.isfile(cost_path) else {}

    def record(step, spent):
        if spent is not None:
            costs[step] = spent[0]
            write_json(costs, cost_path)

    new = {}
    fp_ckpt = fp_model(new, 'data/transfer/mnist/meta/test.txt',
                       make_transfer_data, 'train upstream FP32 ViT',
                       FP_CFG, f'{WORK}/fp', 60)
    record('FP32', new.get('FP32 training'))
    drifted = f'{WORK}/drifted/epoch_100.pth'
    if not osp.isfile(drifted):
        record('drifted', run('train the drifted FP32 control', [
            'tools/train.py', DRIFT_CFG, '--work-dir', f'{WORK}/drifted']))
    # (row, bits, [(source, checkpoint, latent weights, QwT off)])
    groups = [
        ('raw pixels (floor)', 32, [(FP_CFG, fp_ckpt, None, False)]),
        ('random init (floor)', 32, [
            (FP_CFG, _random_init(f'{WORK}/random_init.pth'), None, False)]),
        ('FP32', 32, [(FP_CFG, fp_ckpt, None, False)]),
        ('FP32 drifted (control)', 32, [(FP_CFG, drifted, None, False)])]
    for bits in args.bits:
        for row, method, extra, seeds in METHODS:
            runs = []
            for seed in range(seeds if bits == 4 else 1):
                tag = '_long' if extra else ''
                work = f'{WORK}/{method}{tag}_w{bits}a{bits}_s{seed}'
                final = checkpoint_name(method, bits, bits)
                opts = [f'model.method={method}',
                        f'model.quant_cfg.w_bits={bits}',
                        f'model.quant_cfg.a_bits={bits}',
                        f'randomness.seed={seed}', *extra]
                record(osp.basename(work), train(
                    work, GPLQ_CFG, fp_ckpt, final, opts,
                    step=f'{method}{tag} W{bits}A{bits} seed {seed}'))
                # the drift of the trained latent weights: Stage 1's (a
                # deployable model's final ones have its scales folded in)
                stage1 = osp.join(work, stage1_name(method))
                runs.append((GPLQ_CFG, osp.join(work, final),
                             stage1 if osp.isfile(stage1) else None,
                             row == 'gplq-no-qwt'))
            groups.append((row, bits, runs))
    rows = []
    for row, bits, runs in groups:
        slug = re.sub(r'\W+', '-', row).strip('-')
        results = [_probe(f'{slug}_{bits}_{i}', source, ckpt, fp_ckpt,
                          latent, row.startswith('raw pixels'), not no_qwt)
                   for i, (source, ckpt, latent, no_qwt) in enumerate(runs)]
        rows.append(dict(model=row, bits=bits, runs=results))
    head = ['model', 'bits', 'upstream', 'internal FP32', 'drift MAE'] + [
        f'{s} {k}' for s in SETS for k in ['full'] + [f'{n}-shot'
                                                   for n in SHOTS]]
    lines = ['| ' + ' | '.join(head) + ' |', '|---' * len(head) + '|']
    for r in rows:
        bits = 'FP32' if r['bits'] == 32 else f"W{r['bits']}A{r['bits']}"
        # a floor has no upstream model of its own (pixels: none at all)
        cells = ['-' if '(floor)' in r['model'] and c in COLUMNS[:3] else
                 _cell([x[c] for x in r['runs']]) for c in COLUMNS]
        lines.append(f"| {r['model']} | {bits} | " + ' | '.join(cells) + ' |')
    probe_s = sum(x['probe_s'] for r in rows for x in r['runs'])
    lines.append(
        f'\nmean ± sd over seeds where a row has several; k-shot: mean of 3 '
        f'draws. Whole demo on this machine: {sum(costs.values()) / 60:.1f} '
        f'min of training processes ({len(costs)}) + {probe_s / 60:.1f} min '
        'of probes.')
    write_results(WORK, lines, rows)


if __name__ == '__main__':
    main()
