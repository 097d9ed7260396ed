"""Run-time helpers for tools and scripts (not registered in mmengine)."""
from .checkpoint import (
                         ATOMIC_BACKEND,
                         allow_mmengine_checkpoints,
                         check_checkpoint_file,
                         mmengine_checkpoint_globals,
)
from .launch import (
                         add_runner_args,
                         finish_launch,
                         prepare_launch,
                         runner_config,
)

__all__ = ['allow_mmengine_checkpoints', 'mmengine_checkpoint_globals',
           'check_checkpoint_file', 'ATOMIC_BACKEND',
           'add_runner_args', 'runner_config',
           'prepare_launch', 'finish_launch']
