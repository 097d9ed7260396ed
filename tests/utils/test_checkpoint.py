import pickle
import subprocess
import sys

import pytest
import torch

from gplq_mm.utils import mmengine_checkpoint_globals


def test_mmengine_checkpoint_loads_weights_only_inside_the_block(
        fp_checkpoint):
    # importing gplq_mm changes nothing: outside the block the
    # weights-only loader (torch's default) refuses mmengine's types
    with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
        torch.load(fp_checkpoint)
    with mmengine_checkpoint_globals():
        ckpt = torch.load(fp_checkpoint)  # weights_only=True by default
    assert 'message_hub' in ckpt and 'state_dict' in ckpt


def test_allow_list_for_the_process(fp_checkpoint):
    """allow_mmengine_checkpoints() is process-wide: run it in a child so
    this process keeps torch's defaults."""
    code = ('import torch; from gplq_mm.utils import '
            'allow_mmengine_checkpoints as a; a(); '
            f'print(sorted(torch.load({fp_checkpoint!r})))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, check=True).stdout
    assert "'message_hub'" in out and "'state_dict'" in out


def test_getattr_allow_list_is_narrow(tmp_path):
    """The pickled builtins.getattr resolves HistoryBuffer's statistics
    methods only; anything else fails to load."""
    from mmengine.logging import HistoryBuffer

    class Payload:

        def __init__(self, name):
            self.name = name

        def __reduce__(self):
            return (getattr, (HistoryBuffer, self.name))

    ok, bad = tmp_path / 'ok.pth', tmp_path / 'bad.pth'
    torch.save({'m': Payload('mean')}, ok)
    torch.save({'m': Payload('__init__')}, bad)
    with mmengine_checkpoint_globals():
        assert torch.load(ok)['m'] is HistoryBuffer.mean
        with pytest.raises(Exception, match='only allows'):
            torch.load(bad)


def test_blocks_nest(fp_checkpoint):
    """A block inside a block (the model's FP32 load inside the Runner's)
    leaves the outer one's types in place."""
    with mmengine_checkpoint_globals():
        with mmengine_checkpoint_globals():
            torch.load(fp_checkpoint)
        torch.load(fp_checkpoint)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(fp_checkpoint)
