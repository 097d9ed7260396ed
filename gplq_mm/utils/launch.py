"""Multi-process runs on machines without CUDA (gloo)."""
import gc
import os

import torch
import torch.distributed as dist

__all__ = ['add_runner_args', 'runner_config', 'prepare_launch',
           'finish_launch']


def add_runner_args(parser) -> None:
    """The arguments tools/train.py and tools/test.py share (as mmpretrain's
    and mmdet's tools spell them)."""
    from mmengine.config import DictAction
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def runner_config(args):
    """The config of ``args.config`` with ``--cfg-options``, the launcher and
    the work dir applied (default ``./work_dirs/<config name>``)."""
    from mmengine.config import Config
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = os.path.join(
            './work_dirs', os.path.splitext(os.path.basename(args.config))[0])
    return cfg


def prepare_launch(cfg) -> None:
    """Let ``--launcher pytorch`` work without CUDA.

    mmengine 0.10.7 calls ``torch.cuda.set_device`` when it initializes the
    process group and gives DDP a CUDA ``device_ids``. Without CUDA we start
    the (gloo) group ourselves, which mmengine then reuses, and wrap the
    model in DDP without device ids. With CUDA nothing changes.
    """
    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return
    if not dist.is_initialized():
        dist.init_process_group(
            backend='gloo', rank=int(os.environ['RANK']),
            world_size=int(os.environ['WORLD_SIZE']))
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel', device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))


def finish_launch() -> None:
    """Tear the distributed state down while the interpreter is fully alive.

    Call it after dropping the last reference to the Runner (``del
    runner``). A gloo process group whose last owner (the DDP wrapper's
    reducer) is only freed during interpreter shutdown is destroyed there,
    and a C++ worker thread that then needs the GIL is ended by Python
    (``pthread_exit``) inside a ``noexcept`` frame: the process aborts with
    "terminate called without an active exception" after its work is done
    (seen about once in a hundred 2-process test runs; faulthandler showed
    the main thread with no Python frame left). So: a barrier, the group
    destroyed, then a garbage collection that frees the Runner (its hooks
    and loops reference it in cycles), DDP and the group's backend now.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    gc.collect()
