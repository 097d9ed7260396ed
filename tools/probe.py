"""Linear-probe one checkpoint on the paper's five fine-grained datasets and
print its Table 1 row (five accuracies and the Avg Task).

    python tools/probe.py SOURCE_CONFIG CHECKPOINT [--work-dir DIR]
        [--datasets food-101 ...] [--internal-fp32] [--cfg-options ...]

SOURCE_CONFIG is the config the checkpoint came from (a GPLQ config or the
host's); CHECKPOINT is FP32, Stage 1 or W4A4 / W3A3 of any method. Each
dataset runs tools/train.py then tools/test.py with
configs/probe/linear-probe_<dataset>.py; a finished dataset is reused.
Every dataset root is checked before any work.
"""
import argparse
import os
import os.path as osp
import sys

from mmengine.config import Config

from gplq_mm.demo.runs import ROOT, evaluate, train, write_results
from gplq_mm.probe import check_data_roots

# the paper's Table 1 columns, in its order
DATASETS = {'fgvc-aircraft': 'Aircraft', 'food-101': 'Food',
            'flowers-102': 'Flowers', 'oxford-pets': 'Pets',
            'stanford-cars': 'Cars'}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('source', help='the config the checkpoint came from')
    p.add_argument('checkpoint', help='the checkpoint to probe')
    p.add_argument('--datasets', nargs='+', default=list(DATASETS),
                   choices=list(DATASETS))
    p.add_argument('--work-dir', help='default: work_dirs/probe/<checkpoint '
                   'file name>')
    p.add_argument('--internal-fp32', action='store_true',
                   help='probe the latent weights, every quantizer off')
    p.add_argument('--cfg-options', nargs='+', default=[],
                   help='more options for every probe config')
    args = p.parse_args()
    source, ckpt = (osp.abspath(args.source), osp.abspath(args.checkpoint))
    for path in (source, ckpt):
        if not osp.isfile(path):
            sys.exit(f'error: {path!r} does not exist')
    os.chdir(ROOT)
    work = args.work_dir or osp.join(
        'work_dirs/probe', osp.splitext(osp.basename(ckpt))[0] + (
            '_internal-fp32' if args.internal_fp32 else ''))
    opts = [f'model.source={source}',
            f'model.internal_fp32={args.internal_fp32}', *args.cfg_options]
    cfgs = {d: f'configs/probe/linear-probe_{d}.py' for d in args.datasets}
    loaded = {d: Config.fromfile(cfg) for d, cfg in cfgs.items()}
    try:  # every dataset's layout, before the first one trains
        for c in loaded.values():
            check_data_roots(c)
    except ValueError as e:
        sys.exit(f'error: {e}')
    accs = {}
    for d, cfg in cfgs.items():
        epochs = loaded[d].train_cfg.max_epochs
        final = f'epoch_{epochs}.pth'
        train(f'{work}/{d}', cfg, ckpt, final, opts, step=f'probe {d}')
        m = evaluate(work, d, cfg, f'{work}/{d}/{final}',
                     [f'model.checkpoint={ckpt}', *opts],
                     ['accuracy/top1'], reuse=True)
        accs[d] = m['accuracy/top1']
    cols = [DATASETS[d] for d in accs]
    avg = sum(accs.values()) / len(accs)
    lines = ['| checkpoint | ' + ' | '.join(cols) + ' | Avg Task |',
             '|---' * (len(cols) + 2) + '|',
             f'| {osp.basename(ckpt)} | ' + ' | '.join(
                 f'{a:.2f}' for a in accs.values()) + f' | {avg:.2f} |']
    write_results(work, lines, [dict(checkpoint=ckpt, **accs,
                                     avg_task=avg)])


if __name__ == '__main__':
    main()
