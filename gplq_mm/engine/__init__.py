from .hooks import GPLQHook
from .loops import GPLQTrainLoop

__all__ = ['GPLQHook', 'GPLQTrainLoop']
