"""Compare GPLQ with the baselines on one model and data set, one config
switch (``model.method``) apart, through tools/train.py and tools/test.py.

    python tools/benchmark.py --task cls   # digits ViT (demo data)
    python tools/benchmark.py --task det   # digit-canvas Mask R-CNN, scope
                                           # full

Writes <out>/results.md and <out>/results.json: accuracy (top-1, or box /
mask AP), wall time and peak memory (process RSS on CPU) of each method's
tools/train.py run, for FP32 and every method at each bit width, and the
basin measurements (paper Tables 5 and 7): "internal FP32", the final
checkpoint's latent weights with every quantizer off
(model.internal_fp32=True), and "drift MAE", the mean per-layer MAE of the
weights from the FP32 checkpoint after Stage 1 (the run's gplq_stats.json).
'gplq-no-qwt' is the gplq run evaluated with its QwT compensators off
(training is identical), so it shares gplq's cost and basin numbers.
"""
import argparse
import os
import os.path as osp

from gplq_mm.demo.runs import (
    METRIC_NAMES,
    ROOT,
    TASKS,
    bench_dir,
    evaluate,
    train,
    write_results,
)
from gplq_mm.models.methods import checkpoint_name
from gplq_mm.utils.io import read_json, write_json

METHODS = ('minmax-ptq', 'repq-ptq', 'qat-w4a4', 'gplq-no-qwt', 'gplq',
           'gplq-deploy')


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
    metrics = task['metrics']
    fp = evaluate(out, 'fp32', task['fp_cfg'], fp_ckpt, metrics=metrics)
    # the FP32 model is its own internal FP32, and drifts by nothing
    rows = [dict(method='FP32', bits=32, **fp, drift_mae=0.0,
                 internal_fp32={k: fp[k] for k in metrics})]
    internal = {}  # (training method, bits) -> internal FP32 metrics
    for bits in args.bits:
        for method in args.methods:
            train_method = 'gplq' if method == 'gplq-no-qwt' else method
            work = bench_dir(args.task, train_method, bits, out)
            final = checkpoint_name(train_method, bits, bits)
            opts = [f'model.method={train_method}',
                    f'model.quant_cfg.w_bits={bits}',
                    f'model.quant_cfg.a_bits={bits}']
            seed = [] if args.seed is None else [
                f'randomness.seed={args.seed}']
            cost_path = f'{work}/bench_cost.json'
            cost = train(work, task['cfg'], fp_ckpt, final, opts + seed,
                         step=f'{method} W{bits}A{bits}')
            if cost is not None:
                write_json(dict(wall_s=cost[0], peak_rss_mb=cost[1]),
                           cost_path)
            cost = read_json(cost_path)
            test_opts = opts + (['model.use_qwt=False']
                                if method == 'gplq-no-qwt' else [])
            m = evaluate(out, f'{method}_w{bits}a{bits}', task['cfg'],
                         osp.join(work, final), test_opts, metrics)
            if (train_method, bits) not in internal:
                fp32 = evaluate(
                    out, f'{train_method}_w{bits}a{bits}_internal_fp32',
                    task['cfg'], osp.join(work, final),
                    opts + ['model.internal_fp32=True'], metrics)
                internal[(train_method, bits)] = {k: fp32[k]
                                                  for k in metrics}
            stats_path = f'{work}/gplq_stats.json'
            drift = read_json(stats_path).get('weight_drift', {}) \
                if osp.isfile(stats_path) else {}
            rows.append(dict(method=method, bits=bits, train_s=cost['wall_s'],
                             train_peak_rss_mb=cost['peak_rss_mb'],
                             **{k: m[k] for k in metrics},
                             internal_fp32=internal[(train_method, bits)],
                             drift_mae=drift.get('mae_mean')))
            print(f'==> {method} W{bits}A{bits}: {m}', flush=True)
    lines = ['| method | bits | ' + ' | '.join(
        METRIC_NAMES[m] for m in metrics) + ' | ' + ' | '.join(
        f'internal FP32 {METRIC_NAMES[m]}' for m in metrics) +
        ' | drift MAE | train+PTQ wall (s) | peak RSS (MiB) |',
        '|---|---|' + '---|' * (2 * len(metrics)) + '---|---|---|']
    for r in rows:
        vals = ' | '.join(f'{task["scale"] * r[m]:.1f}' for m in metrics)
        ivals = ' | '.join(f'{task["scale"] * r["internal_fp32"][m]:.1f}'
                           for m in metrics)
        drift = '-' if r['drift_mae'] is None else f"{r['drift_mae']:.3g}"
        wall = f"{r['train_s']:.0f}" if 'train_s' in r else '-'
        mem = f"{r['train_peak_rss_mb']:.0f}" if 'train_s' in r else '-'
        bits = 'FP32' if r['bits'] == 32 else f"W{r['bits']}A{r['bits']}"
        lines.append(f"| {r['method']} | {bits} | {vals} | {ivals} | "
                     f"{drift} | {wall} | {mem} |")
    write_results(out, lines, rows)


if __name__ == '__main__':
    main()
