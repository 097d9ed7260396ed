"""`make demo`: GPLQ W4A4 on real data, end to end, through tools/train.py
and tools/test.py.

1. writes scikit-learn's handwritten digits as an ImageNet-layout dataset;
2. trains a small float ViT on it (configs/demo/vit-tiny_digits_fp.py);
3. runs GPLQ W4A4 on it (configs/demo/gplq_vit-tiny_digits_w4a4.py):
   Stage 1 then Stage 2, one tools/train.py call;
4. evaluates FP32, Stage 1 (W32A4), W4A4 without and with QwT through
   tools/test.py, prints a table and writes work_dirs/demo/cls_results.json;
5. writes the quantization report of the W4A4 model (tools/analyze.py).

Finished steps are reused (pass --force to redo everything).
"""
import argparse
import json
import os
import os.path as osp
import shutil

from gplq_mm.demo.runs import (
    CLS_FP_CFG,
    CLS_GPLQ_CFG,
    ROOT,
    WORK,
    cls_fp_model,
    evaluate,
    run,
    train,
)
from gplq_mm.models.methods import checkpoint_name, stage1_name
from gplq_mm.utils.io import read_json


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--force', action='store_true', help='redo every step')
    args = p.parse_args()
    os.chdir(ROOT)
    if args.force:
        shutil.rmtree(WORK, ignore_errors=True)
    cost = {}
    fp_ckpt = cls_fp_model(cost)
    with open('data/digits/meta/val.txt') as f:
        n_val = sum(1 for _ in f)
    gplq_dir = f'{WORK}/gplq'
    final = f'{gplq_dir}/{checkpoint_name("gplq", 4, 4)}'
    spent = train(gplq_dir, CLS_GPLQ_CFG, fp_ckpt, osp.basename(final),
                  step='GPLQ W4A4')
    if spent is not None:
        cost['GPLQ (Stage 1 + 2)'] = spent
    evals = [
        ('FP32', CLS_FP_CFG, fp_ckpt, []),
        ('Stage 1 (W32A4)', CLS_GPLQ_CFG,
         f'{gplq_dir}/{stage1_name("gplq")}', []),
        ('W4A4, no QwT', CLS_GPLQ_CFG, final, ['model.use_qwt=False']),
        ('W4A4 (GPLQ)', CLS_GPLQ_CFG, final, []),
    ]
    rows = []
    for i, (name, cfg, ckpt, options) in enumerate(evals):
        m = evaluate(WORK, str(i), cfg, ckpt, options, ['accuracy/top1'])
        rows.append(dict(model=name, top1=m['accuracy/top1'],
                         test_s=m['test_s'],
                         test_peak_rss_mb=m['test_peak_rss_mb']))
    stats_path = f'{gplq_dir}/gplq_stats.json'
    stats = read_json(stats_path) if osp.isfile(stats_path) else {}
    fp = rows[0]['top1']
    print(f'\nGPLQ demo: digits, val set {n_val} images '
          f'(1 image = {100 / n_val:.2f} points)\n')
    print('| model | top-1 | vs FP32 |')
    print('|---|---|---|')
    for r in rows:
        print(f"| {r['model']} | {r['top1']:.2f} | {r['top1'] - fp:+.2f} |")
    print('\n| stage | wall time (s) | peak memory (MiB) |')
    print('|---|---|---|')
    for k, (wall, rss) in cost.items():
        print(f'| {k} (whole process) | {wall:.1f} | {rss:.0f} |')
    for k in ('calibration', 'pca', 'stage1', 'stage2'):
        if f'{k}_s' in stats:
            mem = stats.get(f'{k}_peak_mem_mb')
            print(f"| {k} | {stats[f'{k}_s']:.1f} | "
                  f"{'' if mem is None else f'{mem:.0f}'} |")
    result = dict(val_images=n_val, rows=rows, processes={
        k: dict(wall_s=w, peak_rss_mb=m) for k, (w, m) in cost.items()
    }, gplq_stats=stats)
    with open(f'{WORK}/cls_results.json', 'w') as f:
        json.dump(result, f, indent=2)
    print(f'\nwritten: {WORK}/cls_results.json')
    run('quantization report', [
        'tools/analyze.py', CLS_GPLQ_CFG, final, '--out',
        f'{WORK}/report_cls'])


if __name__ == '__main__':
    main()
