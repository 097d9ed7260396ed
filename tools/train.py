"""Train with a config (mmpretrain / mmdet style); GPLQ configs run both
stages in one call. Thin: parse args, build the Runner, run."""
import argparse
import sys

from mmengine.runner import Runner, find_latest_checkpoint

import gplq_mm  # noqa: F401  registers the GPLQ models and hook
from gplq_mm.probe.preflight import check_data_roots
from gplq_mm.utils import (
    add_runner_args,
    check_checkpoint_file,
    finish_launch,
    mmengine_checkpoint_globals,
    prepare_launch,
    runner_config,
)


def parse_args():
    p = argparse.ArgumentParser(description='Train a model')
    p.add_argument('config', help='train config file path')
    p.add_argument('--resume', nargs='?', type=str, const='auto',
                   help='resume from the given checkpoint, or from the '
                   'latest one in the work dir when no path is given')
    p.add_argument('--amp', action='store_true', help='mixed precision')
    add_runner_args(p)
    return p.parse_args()


def main():
    args = parse_args()
    cfg = runner_config(args)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    # a truncated checkpoint or a missing dataset file gets one clear line,
    # before any work
    try:
        check_data_roots(cfg)
        if cfg.get('load_from'):
            check_checkpoint_file(cfg.load_from)
        elif cfg.get('resume'):
            latest = find_latest_checkpoint(cfg.work_dir)
            if latest:
                check_checkpoint_file(latest)
    except ValueError as e:
        sys.exit(f'error: {e}')
    prepare_launch(cfg)
    runner = Runner.from_cfg(cfg)
    # torch >= 2.6 loads weights-only; resume / load_from read mmengine's
    # checkpoints, which hold numpy and mmengine types.
    with mmengine_checkpoint_globals():
        runner.train()
    del runner  # freed by finish_launch, before the interpreter exits
    finish_launch()


if __name__ == '__main__':
    main()
