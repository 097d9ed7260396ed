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
import os
import os.path as osp
import tempfile
import zipfile

import numpy as np
import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.logging import HistoryBuffer

__all__ = ['allow_mmengine_checkpoints', 'mmengine_checkpoint_globals',
           'AtomicLocalBackend', 'ATOMIC_BACKEND', 'check_checkpoint_file']


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


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend, writing each file whole or not at all:
    into a temporary file beside the target, then ``os.replace`` (atomic on
    POSIX and Windows). A job killed while it saves a checkpoint leaves the
    previous file intact, never a truncated one. Selected with
    ``backend_args=dict(backend='gplq_atomic')`` (the GPLQ recipes do)."""

    def _atomic(self, data, filepath, mode: str, **kw) -> None:
        filepath = str(filepath)
        os.makedirs(osp.dirname(osp.abspath(filepath)), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=osp.dirname(osp.abspath(filepath)),
                                   prefix='.' + osp.basename(filepath),
                                   suffix='.tmp')
        try:
            with os.fdopen(fd, mode, **kw) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            # mkstemp's file is private (0600); give it open()'s mode
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, filepath)
        except BaseException:
            if osp.exists(tmp):
                os.remove(tmp)
            raise

    def put(self, obj: bytes, filepath) -> None:
        self._atomic(obj, filepath, 'wb')

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        self._atomic(obj, filepath, 'w', encoding=encoding)


ATOMIC_BACKEND = 'gplq_atomic'
register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


def check_checkpoint_file(path: str, what: str = 'checkpoint') -> None:
    """Raise one clear error when the local file ``path`` is not a complete
    torch checkpoint (truncated or corrupt); URLs and missing files are left
    to the loader."""
    if '://' in str(path) or not osp.isfile(path):
        return
    with open(path, 'rb') as f:
        head = f.read(2)
    if not zipfile.is_zipfile(path) and head[:1] == b'\x80' and \
            osp.getsize(path) > 1024:
        return  # torch's legacy (pre-1.6) pickle format: nothing to test
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError) as e:
        bad = str(e)
    if bad is not None:
        raise ValueError(
            f'{what} {path!r} is truncated or corrupt ({bad}); it was '
            'probably cut off while being written. Use an earlier '
            'checkpoint of the run (or delete this one and resume from the '
            'work dir), or write it again.')
