from .checkpoint import allow_mmengine_checkpoints
from .hooks import GPLQHook
from .launch import finish_launch, prepare_launch

__all__ = ['GPLQHook', 'allow_mmengine_checkpoints', 'prepare_launch',
           'finish_launch']
