"""Multi-process runs on machines without CUDA (gloo)."""
import os

import torch
import torch.distributed as dist

__all__ = ['prepare_launch', 'finish_launch']


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
    """Tear the process group down before exit: a gloo group left to the
    interpreter's shutdown can abort the process ("terminate called without
    an active exception") after the work is done."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
