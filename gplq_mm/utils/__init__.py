"""Run-time helpers for tools and scripts (not registered in mmengine)."""
from .checkpoint import allow_mmengine_checkpoints, mmengine_checkpoint_globals
from .launch import (add_runner_args, finish_launch, prepare_launch,
                     runner_config)

__all__ = ['allow_mmengine_checkpoints', 'mmengine_checkpoint_globals',
           'add_runner_args', 'runner_config',
           'prepare_launch', 'finish_launch']
