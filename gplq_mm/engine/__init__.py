from .checkpoint import allow_mmengine_checkpoints
from .hooks import GPLQHook

__all__ = ['GPLQHook', 'allow_mmengine_checkpoints']
