from .hooks import GPLQHook

__all__ = ['GPLQHook']
