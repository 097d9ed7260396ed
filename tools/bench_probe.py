"""`make bench-probe`: the cost of a 100-epoch linear probe on cached
features of Food-101's size (75,750 x 768, 101 classes; the paper's
protocol, batch 64), on random features, through the loop tools/train.py
runs and through gplq_mm.probe.fit_linear. The per-epoch time is measured
over --epochs epochs (default 3) and projected to 100; --epochs 100 runs
the whole probe.

    python tools/bench_probe.py [--epochs 3] [--threads 2]
"""
import argparse
import os

from gplq_mm.demo.runs import ROOT, write_results


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--out', default='work_dirs/bench/probe')
    args = p.parse_args()
    os.chdir(ROOT)
    os.makedirs(args.out, exist_ok=True)
    from gplq_mm.bench.probe import probe_cost
    r = probe_cost(epochs=args.epochs, threads=args.threads)
    lines = [f"{r['n']} x {r['dim']} random features, {r['classes']} "
             f"classes, {r['iters_per_epoch']} iterations an epoch, "
             f"{r['threads']} threads; measured over {args.epochs} epochs",
             '', '| path | s / epoch | 100 epochs (min) | target |',
             '|---|---|---|---|']
    for k, name in (('loop', 'LinearProbeLoop (tools/train.py)'),
                    ('fit_linear', 'fit_linear (in process)')):
        lines.append(f"| {name} | {r[f'{k}_s_per_epoch']:.2f} | "
                     f"{r[f'{k}_100_epochs_min']:.1f} | < 5 |")
    write_results(args.out, lines, [r])


if __name__ == '__main__':
    main()
