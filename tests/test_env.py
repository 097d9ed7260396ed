import os.path as osp
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gplq_mm.env import TORCH_MINIMUM_VERSION, check_torch_version

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.mark.parametrize('version', ['2.5.1', '2.5.1+cu124', '1.13.0',
                                     '2.0.0a0+git1234'])
def test_older_torch_is_one_line_naming_floor_and_version(monkeypatch,
                                                          version):
    monkeypatch.setattr(torch, '__version__', version)
    with pytest.raises(ImportError) as info:
        check_torch_version()
    msg = str(info.value)
    assert '\n' not in msg
    assert f'torch >= {TORCH_MINIMUM_VERSION}' in msg
    assert f'torch {version} is installed' in msg


@pytest.mark.parametrize('version', ['2.6.0', '2.6.0+cpu', '2.10.1',
                                     '3.0.0.dev20300101'])
def test_floor_and_newer_pass(monkeypatch, version):
    monkeypatch.setattr(torch, '__version__', version)
    check_torch_version()


def test_floor_matches_setup_py():
    setup = Path(osp.join(ROOT, 'setup.py')).read_text()
    assert re.findall(r"'torch>=([\d.]+)'", setup) == [TORCH_MINIMUM_VERSION]


def test_import_fails_before_anything_else_is_imported():
    """In a fresh interpreter (the registries of this one stay untouched):
    ``import gplq_mm`` with an old torch raises at once; neither mmengine nor
    another gplq_mm module has been imported."""
    code = (
        'import sys, torch\n'
        "torch.__version__ = '2.5.1'\n"
        'try:\n'
        '    import gplq_mm\n'
        'except ImportError as e:\n'
        '    print(e)\n'
        "print(sorted(m for m in sys.modules if m.startswith(('gplq_mm', "
        "'mmengine', 'mmcv', 'mmpretrain', 'mmdet'))))\n")
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert out == [
        f'gplq_mm needs torch >= {TORCH_MINIMUM_VERSION}, but torch 2.5.1 is '
        f'installed: pip install "torch>={TORCH_MINIMUM_VERSION}" '
        '(docs/install.md)',
        "['gplq_mm.env']"]
