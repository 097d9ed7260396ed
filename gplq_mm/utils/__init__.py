"""Run-time helpers for tools and scripts (not registered in mmengine)."""
from .checkpoint import allow_mmengine_checkpoints, mmengine_checkpoint_globals
from .launch import finish_launch, prepare_launch

__all__ = ['allow_mmengine_checkpoints', 'mmengine_checkpoint_globals',
           'prepare_launch', 'finish_launch']
