"""Stage 1 at the cost of ordinary fine-tuning? Measures, side by side in one
process, for DeiT-S and Swin-T at 224 px (mmpretrain models, random init,
random data): a fine-tuning step (fp32 and bf16 autocast; compiled with
--compile), the GPLQ Stage-1 step, Stage-2 time (weight PTQ + QwT), and
float vs fake-quant eval throughput. Prints ms/iter, images/s, memory and the
ratios to the float baselines, and the projected Stage-1 ImageNet epoch.

Memory: peak CUDA memory on a GPU; on CPU, the bytes autograd saves for
backward (activations and autocast's weight copies; parameters excluded), a
deterministic proxy.

    python tools/bench_speed.py              # CPU: batch 4, 3 iterations
    python tools/bench_speed.py --compile    # on a GPU: batch 128, the
                                             # issue's targets, compiled too
"""
import argparse
import json
import os
import os.path as osp

import gplq_mm  # noqa: F401
from gplq_mm.bench.speed import MODEL_CFGS, run


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=list(MODEL_CFGS),
                   choices=list(MODEL_CFGS))
    p.add_argument('--batch', type=int, help='default: 128 on a GPU, 4 on '
                   'CPU')
    p.add_argument('--iters', type=int, help='default: 20 on a GPU, 3 on CPU')
    p.add_argument('--warmup', type=int, help='default: 5 on a GPU, 1 on CPU')
    p.add_argument('--compile', action='store_true',
                   help='also time every step with the backbones compiled '
                   '(float and GPLQ alike; model.compile_cfg)')
    p.add_argument('--precisions', nargs='+', default=['fp32', 'bf16'],
                   choices=['fp32', 'bf16'],
                   help='training-step precisions (the targets need bf16)')
    p.add_argument('--compile-mode', default=None,
                   help='torch.compile mode, e.g. max-autotune')
    p.add_argument('--out', default='work_dirs/bench_speed.json')
    args = p.parse_args()
    compile_cfg = None
    if args.compile:
        compile_cfg = {'mode': args.compile_mode} if args.compile_mode \
            else {}
    result = run(args.models, args.batch, args.iters, args.warmup,
                 compile_cfg, args.precisions)
    os.makedirs(osp.dirname(args.out) or '.', exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=2)
    print(f'\nwritten: {args.out}')


if __name__ == '__main__':
    main()
