"""`make demo-det`: GPLQ W4A4 Mask R-CNN on real data through tools/train.py
and tools/test.py.

1. writes digit canvases as a COCO instance-segmentation set
   (tools/make_digit_coco.py);
2. trains a small float Swin Mask R-CNN on it;
3. runs GPLQ W4A4 twice: scope 'backbone' and scope 'full';
4. evaluates FP32, Stage 1 (W32A4) and W4A4 of both scopes with COCO box /
   mask AP through tools/test.py; prints a table and writes
   work_dirs/demo/det_results.json;
5. writes the quantization report of the scope-'full' W4A4 model
   (tools/analyze.py).

Finished steps are reused (pass --force to redo everything).
"""
import argparse
import json
import os
import os.path as osp
import shutil

from gplq_mm.demo.runs import (
    DET_FP_CFG,
    DET_GPLQ_CFG,
    ROOT,
    WORK,
    det_fp_model,
    evaluate,
    run,
    train,
)
from gplq_mm.models.methods import checkpoint_name, stage1_name
from gplq_mm.utils.io import read_json

FINAL = checkpoint_name('gplq', 4, 4)

FP_DIR = f'{WORK}/det_fp'


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--force', action='store_true', help='redo every step')
    args = p.parse_args()
    os.chdir(ROOT)
    if args.force:
        for d in [FP_DIR] + [f'{WORK}/det_gplq_{s}' for s in DET_GPLQ_CFG]:
            shutil.rmtree(d, ignore_errors=True)
    cost = {}
    fp_ckpt = det_fp_model(cost)
    val = read_json('data/digit_coco/annotations/instances_val.json')
    evals = [('FP32', DET_FP_CFG, fp_ckpt, None)]
    for scope, cfg in DET_GPLQ_CFG.items():
        work = f'{WORK}/det_gplq_{scope}'
        spent = train(work, cfg, fp_ckpt, FINAL,
                      step=f'GPLQ W4A4, scope {scope}')
        if spent is not None:
            cost[f'GPLQ {scope} (Stage 1 + 2)'] = spent
        evals += [(f'Stage 1 (W32A4), {scope}', cfg,
                   f'{work}/{stage1_name("gplq")}', scope),
                  (f'W4A4 (GPLQ), {scope}', cfg, f'{work}/{FINAL}', scope)]
    rows = []
    for i, (name, cfg, ckpt, scope) in enumerate(evals):
        m = evaluate(WORK, f'det_{i}', cfg, ckpt)
        rows.append(dict(model=name, scope=scope, bbox_mAP=m['coco/bbox_mAP'],
                         segm_mAP=m['coco/segm_mAP'], test_s=m['test_s'],
                         test_peak_rss_mb=m['test_peak_rss_mb']))
    print(f"\nGPLQ detection demo: digit canvases, val {len(val['images'])} "
          f"images / {len(val['annotations'])} instances\n")
    print('| model | box AP | mask AP |')
    print('|---|---|---|')
    for r in rows:
        print(f"| {r['model']} | {100 * r['bbox_mAP']:.1f} | "
              f"{100 * r['segm_mAP']:.1f} |")
    stats = {}
    for scope in DET_GPLQ_CFG:
        path = f'{WORK}/det_gplq_{scope}/gplq_stats.json'
        if osp.isfile(path):
            stats[scope] = read_json(path)
    print('\n| step | wall time (s) | peak memory (MiB) |')
    print('|---|---|---|')
    for k, (wall, rss) in cost.items():
        print(f'| {k} (whole process) | {wall:.1f} | {rss:.0f} |')
    for scope, st in stats.items():
        for k in ('calibration', 'stage1', 'stage2'):
            if f'{k}_s' in st:
                mem = st.get(f'{k}_peak_mem_mb')
                print(f"| {scope}: {k} | {st[f'{k}_s']:.1f} | "
                      f"{'' if mem is None else f'{mem:.0f}'} |")
    with open(f'{WORK}/det_results.json', 'w') as f:
        json.dump(dict(val_images=len(val['images']),
                       val_instances=len(val['annotations']), rows=rows,
                       processes={k: dict(wall_s=w, peak_rss_mb=m)
                                  for k, (w, m) in cost.items()},
                       gplq_stats=stats), f, indent=2)
    print(f'\nwritten: {WORK}/det_results.json')
    run('quantization report (scope full)', [
        'tools/analyze.py', DET_GPLQ_CFG['full'],
        f'{WORK}/det_gplq_full/{FINAL}', '--out',
        f'{WORK}/report_det'])


if __name__ == '__main__':
    main()
