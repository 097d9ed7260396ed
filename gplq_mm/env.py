"""What gplq_mm needs of the installed stack, checked before anything else
is imported (``gplq_mm/__init__.py`` calls :func:`check_torch_version`
first).

torch 2.6 is the floor: the newest torch features gplq_mm calls are
``DataLoader(in_order=...)`` (``engine/loops.py``) and the
``(function, 'module.name')`` entries of
``torch.serialization.safe_globals`` (``utils/checkpoint.py``), both new in
2.6; the others are older (``torch.get_autocast_dtype`` and
``torch.is_autocast_enabled(device)`` 2.4, ``torch.onnx.export(dynamo=...)``
2.5). ``setup.py`` declares the same floor.
"""
import re
from typing import Tuple

import torch

__all__ = ['TORCH_MINIMUM_VERSION', 'check_torch_version']

TORCH_MINIMUM_VERSION = '2.6'


def _major_minor(version: str) -> Tuple[int, int]:
    """``(major, minor)`` of a torch version string.

    Examples:
        >>> _major_minor('2.6.0+cu124'), _major_minor('2.10.0a0+git1234')
        ((2, 6), (2, 10))
    """
    match = re.match(r'(\d+)\.(\d+)', version)
    if match is None:
        raise ImportError(f'gplq_mm cannot read the torch version '
                          f'{version!r}; it needs torch >= '
                          f'{TORCH_MINIMUM_VERSION}')
    return int(match.group(1)), int(match.group(2))


def check_torch_version() -> None:
    """Raise an ImportError, one line naming the floor and the installed
    version, when the installed torch is older than
    :data:`TORCH_MINIMUM_VERSION`.

    Reads ``torch.__version__`` (of the torch that ``import torch`` finds).
    """
    installed = str(torch.__version__)
    if _major_minor(installed) < _major_minor(TORCH_MINIMUM_VERSION):
        raise ImportError(
            f'gplq_mm needs torch >= {TORCH_MINIMUM_VERSION}, but torch '
            f'{installed} is installed: pip install '
            f'"torch>={TORCH_MINIMUM_VERSION}" (docs/install.md)')
