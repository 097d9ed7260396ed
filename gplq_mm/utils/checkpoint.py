"""Let torch's weights-only loader read the checkpoints mmengine writes.

torch >= 2.6 loads with ``weights_only=True``; mmengine 0.10.7 calls
``torch.load`` without the argument, and its checkpoints hold numpy arrays and
scalars (message hub, seeds) and ``HistoryBuffer`` objects, whose pickled
state calls ``getattr(HistoryBuffer, '<statistic>')``. We allow-list exactly
these types, and map the pickled ``builtins.getattr`` to a function that only
resolves HistoryBuffer's statistics methods, so the weights-only safety stays
on for everything else.
"""
import numpy as np
import torch
from mmengine.logging import HistoryBuffer

__all__ = ['allow_mmengine_checkpoints']


def _history_buffer_getattr(obj, name: str, *default):
    allowed = {'min', 'max', 'current', 'mean'}
    allowed |= set(HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and name in allowed:
        return getattr(obj, name)
    raise RuntimeError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); gplq_mm only allows '
        'the statistics methods of mmengine HistoryBuffer')


def _numpy_globals() -> list:
    core = getattr(np, '_core', None) or np.core
    out = [np.ndarray, np.dtype, core.multiarray._reconstruct,
           core.multiarray.scalar]
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    return out


def allow_mmengine_checkpoints() -> None:
    """Allow-list the globals of mmengine checkpoints (idempotent)."""
    if not hasattr(torch.serialization, 'add_safe_globals'):
        return  # torch < 2.4 loads without weights_only by default
    torch.serialization.add_safe_globals(
        [HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr')] +
        _numpy_globals())
