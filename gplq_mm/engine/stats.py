"""What a GPLQ run measures about itself (``<work_dir>/gplq_stats.json``):
wall times, peak memory and the numbers each step reports."""
import json
import os.path as osp
import resource
import time
from typing import Optional

import torch
from mmengine.dist import is_main_process

__all__ = ['RunStats', 'peak_memory_mb']


def _cuda_on() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def peak_memory_mb() -> float:
    """Peak GPU memory allocated when on CUDA, else peak host RSS."""
    if _cuda_on():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RunStats(dict):
    """The statistics of a run, a dict written whole to
    ``gplq_stats.json`` by :meth:`dump` (main process only); :meth:`start`
    and :meth:`stop` time a named step and its peak memory."""

    def __init__(self):
        super().__init__()
        self._t0 = {}

    def start(self, name: str) -> None:
        if _cuda_on():
            torch.cuda.reset_peak_memory_stats()
        self._t0[name] = time.time()

    def stop(self, name: str, memory: bool = False) -> float:
        """Record ``<name>_s`` (and ``<name>_peak_mem_mb``); returns the
        seconds."""
        spent = time.time() - self._t0.pop(name)
        self[f'{name}_s'] = spent
        if memory:
            self[f'{name}_peak_mem_mb'] = peak_memory_mb()
        return spent

    def dump(self, work_dir: str, name: str = 'gplq_stats.json'
             ) -> Optional[str]:
        if not is_main_process():
            return None
        path = osp.join(work_dir, name)
        with open(path, 'w') as f:
            json.dump(self, f, indent=2)
        return path
