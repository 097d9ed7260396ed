"""Let torch's weights-only loader read the checkpoints mmengine writes.

Nothing happens on import: ``tools/train.py`` and ``tools/test.py`` run the
Runner inside :func:`mmengine_checkpoint_globals`, and the GPLQ models load
their FP32 checkpoint inside it; code of your own that loads mmengine
checkpoints with torch >= 2.6 can do the same (or call
:func:`allow_mmengine_checkpoints` once, which allow-lists them for the rest
of the process).

torch >= 2.6 loads with ``weights_only=True``; mmengine 0.10.7 calls
``torch.load`` without the argument, and its checkpoints hold numpy arrays and
scalars (message hub, seeds) and ``HistoryBuffer`` objects, whose pickled
state calls ``getattr(HistoryBuffer, '<statistic>')``. We allow-list exactly
these types, and map the pickled ``builtins.getattr`` to a function that only
resolves HistoryBuffer's statistics methods, so the weights-only safety stays
on for everything else.
"""
import contextlib

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

__all__ = ['allow_mmengine_checkpoints', 'mmengine_checkpoint_globals']


def _history_buffer_getattr(obj, name: str, *default):
    # mmengine's own statistics (a statistic registered by user code with
    # HistoryBuffer.register_statistics is refused, with this message).
    if obj is HistoryBuffer and name in ('min', 'max', 'current', 'mean'):
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


def _allowed() -> list:
    return [HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr')
            ] + _numpy_globals()


@contextlib.contextmanager
def mmengine_checkpoint_globals():
    """Within the block, torch's weights-only loader also accepts the types
    mmengine checkpoints hold (and nothing else). Nests: inside another such
    block, or after :func:`allow_mmengine_checkpoints`, it changes nothing
    (torch's own context would remove the types on exit)."""
    if HistoryBuffer in torch.serialization.get_safe_globals():
        yield
        return
    with torch.serialization.safe_globals(_allowed()):
        yield


def allow_mmengine_checkpoints() -> None:
    """Allow-list the types of mmengine checkpoints for the rest of the
    process (idempotent)."""
    torch.serialization.add_safe_globals(_allowed())
