"""Compare GPLQ with the baselines on one model and data set, one config
switch (``model.method``) apart, through tools/train.py and tools/test.py.

    python tools/benchmark.py --task cls   # digits ViT (demo data)
    python tools/benchmark.py --task det   # digit-canvas Mask R-CNN, full scope

Writes <out>/results.md and <out>/results.json: accuracy (top-1, or box /
mask AP), wall time and peak memory (process RSS on CPU) of each method's
tools/train.py run, for FP32 and every method at each bit width.
'gplq-no-qwt' is the gplq run evaluated with its QwT compensators off
(training is identical), so it shares gplq's cost.
"""
import argparse
import json
import os
import os.path as osp

from gplq_mm.demo.runs import (CLS_FP_CFG, CLS_GPLQ_CFG, DET_FP_CFG,
                               DET_GPLQ_CFG, METRIC_NAMES, ROOT, cls_fp_model,
                               det_fp_model, run, write_results)

METHODS = ('minmax-ptq', 'repq-ptq', 'qat-w4a4', 'gplq-no-qwt', 'gplq',
           'gplq-deploy')
TASKS = dict(
    cls=dict(fp_cfg=CLS_FP_CFG, cfg=CLS_GPLQ_CFG, fp_model=cls_fp_model,
             metrics=('accuracy/top1', )),
    det=dict(fp_cfg=DET_FP_CFG, cfg=DET_GPLQ_CFG['full'],
             fp_model=det_fp_model,
             metrics=('coco/bbox_mAP', 'coco/segm_mAP')),
)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--task', choices=sorted(TASKS), required=True)
    p.add_argument('--methods', nargs='+', default=list(METHODS),
                   choices=METHODS)
    p.add_argument('--bits', nargs='+', type=int, default=[4, 3])
    p.add_argument('--seed', type=int, default=None,
                   help='randomness.seed of the quantization runs (data '
                   'order, calibration batches)')
    p.add_argument('--out', help='default: work_dirs/bench/<task>[_seedS]')
    args = p.parse_args()
    os.chdir(ROOT)
    task = TASKS[args.task]
    out = args.out or f'work_dirs/bench/{args.task}' + (
        '' if args.seed is None else f'_seed{args.seed}')
    os.makedirs(out, exist_ok=True)
    fp_ckpt = task['fp_model']({})

    def evaluate(name, cfg, ckpt, options):
        path = f'{out}/eval_{name}.json'
        run(f'test {name}', ['tools/test.py', cfg, ckpt, '--out', path,
                             '--work-dir', f'{out}/test_{name}'] +
            (['--cfg-options'] + options if options else []))
        m = json.load(open(path))
        return {k: m[k] for k in task['metrics']}

    rows = [dict(method='FP32', bits=32,
                 **evaluate('fp32', task['fp_cfg'], fp_ckpt, []))]
    for bits in args.bits:
        for method in args.methods:
            train_method = 'gplq' if method == 'gplq-no-qwt' else method
            work = f'{out}/{train_method}_w{bits}a{bits}'
            opts = [f'model.method={train_method}',
                    f'model.quant_cfg.w_bits={bits}',
                    f'model.quant_cfg.a_bits={bits}']
            seed = [] if args.seed is None else [
                f'randomness.seed={args.seed}']
            cost_path = f'{work}/bench_cost.json'
            if not osp.isfile(f'{work}/{train_method}_w{bits}a{bits}.pth'):
                wall, rss = run(f'{method} W{bits}A{bits}', [
                    'tools/train.py', task['cfg'], '--work-dir', work,
                    '--cfg-options', f'model.checkpoint={fp_ckpt}'] + opts +
                    seed)
                json.dump(dict(wall_s=wall, peak_rss_mb=rss),
                          open(cost_path, 'w'))
            cost = json.load(open(cost_path))
            test_opts = opts + (['model.use_qwt=False']
                                if method == 'gplq-no-qwt' else [])
            metrics = evaluate(f'{method}_w{bits}a{bits}', task['cfg'],
                               f'{work}/{train_method}_w{bits}a{bits}.pth',
                               test_opts)
            rows.append(dict(method=method, bits=bits, train_s=cost['wall_s'],
                             train_peak_rss_mb=cost['peak_rss_mb'],
                             **metrics))
            print(f'==> {method} W{bits}A{bits}: {metrics}', flush=True)
    names = METRIC_NAMES
    scale = 1 if args.task == 'cls' else 100
    lines = ['| method | bits | ' + ' | '.join(
        names[m] for m in task['metrics']) +
        ' | train+PTQ wall (s) | peak RSS (MiB) |',
        '|---|---|' + '---|' * len(task['metrics']) + '---|---|']
    for r in rows:
        vals = ' | '.join(f'{scale * r[m]:.1f}' for m in task['metrics'])
        wall = f"{r['train_s']:.0f}" if 'train_s' in r else '-'
        mem = f"{r['train_peak_rss_mb']:.0f}" if 'train_s' in r else '-'
        bits = 'FP32' if r['bits'] == 32 else f"W{r['bits']}A{r['bits']}"
        lines.append(f"| {r['method']} | {bits} | {vals} | {wall} | {mem} |")
    write_results(out, lines, rows)


if __name__ == '__main__':
    main()
