import os

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def fresh_mmengine_singletons():
    """Every test starts with none of mmengine's global instances
    (MessageHub, Visualizer, MMLogger, DefaultScope) that an earlier test's
    Runner created: a Runner reuses them by name, so one test's logger,
    message hub or visualizer would reach the next. mmengine offers no
    public way to drop them; its own RunnerTestCase.tearDown clears
    ``_instance_dict`` as here (the one place gplq_mm touches it), and we
    close the loggers' file handlers first."""
    yield
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.registry import DefaultScope
    from mmengine.visualization import Visualizer
    for logger in MMLogger._instance_dict.values():
        for handler in list(logger.handlers):
            handler.close()
            logger.removeHandler(handler)
    for cls in (MMLogger, Visualizer, DefaultScope, MessageHub):
        cls._instance_dict.clear()


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
