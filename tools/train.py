"""Train with a config (mmpretrain / mmdet style); GPLQ configs run both
stages in one call. Thin: parse args, build the Runner, run."""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

import gplq_mm  # noqa: F401  registers the GPLQ models and hook
from gplq_mm.utils import (finish_launch, mmengine_checkpoint_globals,
                           prepare_launch)


def parse_args():
    p = argparse.ArgumentParser(description='Train a model')
    p.add_argument('config', help='train config file path')
    p.add_argument('--work-dir', help='the dir to save logs and models')
    p.add_argument('--resume', nargs='?', type=str, const='auto',
                   help='resume from the given checkpoint, or from the '
                   'latest one in the work dir when no path is given')
    p.add_argument('--amp', action='store_true', help='mixed precision')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, key=value')
    p.add_argument('--launcher', default='none',
                   choices=['none', 'pytorch', 'slurm', 'mpi'])
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    prepare_launch(cfg)
    runner = Runner.from_cfg(cfg)
    # torch >= 2.6 loads weights-only; resume / load_from read mmengine's
    # checkpoints, which hold numpy and mmengine types.
    with mmengine_checkpoint_globals():
        runner.train()
    finish_launch()


if __name__ == '__main__':
    main()
