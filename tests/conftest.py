import os

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope='session')
def digits_root(tmp_path_factory):
    from gplq_mm.demo import make_digits
    root = str(tmp_path_factory.mktemp('digits'))
    make_digits(root, size=16)
    return root


@pytest.fixture(scope='session')
def fp_checkpoint(digits_root, tmp_path_factory):
    """A tiny float ViT trained for one epoch by an mmengine Runner: the
    checkpoint holds what mmengine writes (message hub, numpy meta)."""
    from mmengine.runner import Runner

    import gplq_mm  # noqa: F401
    from tests.helpers import fp_cfg
    work_dir = str(tmp_path_factory.mktemp('fp'))
    Runner.from_cfg(fp_cfg(digits_root, work_dir)).train()
    return os.path.join(work_dir, 'epoch_1.pth')


@pytest.fixture(scope='session')
def digit_coco_root(tmp_path_factory):
    from gplq_mm.demo import make_digit_coco
    root = str(tmp_path_factory.mktemp('digit_coco'))
    make_digit_coco(root, n_train=8, n_val=4)
    return root


@pytest.fixture(scope='session')
def det_fp_checkpoint(digit_coco_root, tmp_path_factory):
    from mmengine.runner import Runner

    import gplq_mm  # noqa: F401
    from tests.helpers import det_fp_cfg
    work_dir = str(tmp_path_factory.mktemp('det_fp'))
    Runner.from_cfg(det_fp_cfg(digit_coco_root, work_dir)).train()
    return os.path.join(work_dir, 'epoch_1.pth')
