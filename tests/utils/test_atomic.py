import os
from pathlib import Path

import pytest
import torch

from gplq_mm.utils import check_checkpoint_file
from gplq_mm.utils.checkpoint import AtomicLocalBackend


def test_atomic_writes_leave_the_old_file_when_interrupted(tmp_path,
                                                           monkeypatch):
    path = tmp_path / 'sub' / 'epoch_1.pth'
    backend = AtomicLocalBackend()
    backend.put(b'old', path)
    backend.put_text('last', tmp_path / 'last_checkpoint')
    assert path.read_bytes() == b'old'
    assert (tmp_path / 'last_checkpoint').read_text() == 'last'
    plain = tmp_path / 'plain'
    plain.write_bytes(b'')  # the mode open() gives under this umask
    assert path.stat().st_mode == plain.stat().st_mode

    def killed(src, dst):  # the job dies between writing and renaming
        raise KeyboardInterrupt

    monkeypatch.setattr(os, 'replace', killed)
    with pytest.raises(KeyboardInterrupt):
        backend.put(b'new and longer', path)
    assert path.read_bytes() == b'old'
    assert sorted(p.name for p in path.parent.iterdir()) == ['epoch_1.pth']


def test_truncated_checkpoint_gets_one_clear_error(tmp_path):
    path = tmp_path / 'epoch_3.pth'
    torch.save({'state_dict': {'w': torch.ones(4096)}}, path)
    check_checkpoint_file(str(path))  # complete: fine
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"checkpoint '.*epoch_3\.pth' is "
                       'truncated or corrupt'):
        check_checkpoint_file(str(path))
    check_checkpoint_file('https://example.com/x.pth')  # left to the loader


def test_tools_say_it_in_one_line(tmp_path, fp_checkpoint):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    bad = tmp_path / 'cut.pth'
    data = Path(fp_checkpoint).read_bytes()
    bad.write_bytes(data[:len(data) // 3])
    proc = subprocess.run(
        [sys.executable, 'tools/test.py',
         'configs/demo/gplq_vit-tiny_digits_w4a4.py', str(bad)], cwd=root,
        capture_output=True, text=True)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: checkpoint '{bad}' is truncated")
    assert 'Traceback' not in proc.stderr
