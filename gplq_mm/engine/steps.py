"""The training images the steps outside the gradient steps read
(calibration, PCA, Stage 2), checked and counted with progress."""
import math
from typing import Iterator, Optional

from mmengine.dist import get_world_size
from mmengine.model import is_model_wrapper

from ..utils.data import take_images, with_progress
from .loops import GPLQTrainLoop

__all__ = ['unwrap', 'check_image_count', 'step_batches']

PROGRESS_S = 10.0  # seconds between progress lines of long steps


def unwrap(model):
    """The model inside a DDP (or other mmengine) wrapper."""
    return model.module if is_model_wrapper(model) else model


def check_image_count(runner, name: str, n: int) -> None:
    """Raise when the training set is empty or smaller than ``n``, the
    image count of the setting ``name``."""
    size = len(runner.train_dataloader.dataset)
    if size == 0:
        raise ValueError(
            'the training set is empty: check train_dataloader.dataset '
            '(data_root, ann_file, data_prefix)')
    if n > size:
        raise ValueError(
            f'GPLQHook.{name}={n} but the training set has only {size} '
            f'images; lower {name} or use a larger dataset')


def step_batches(runner, n_total: int, what: Optional[str] = None,
                 progress_s: float = PROGRESS_S) -> Iterator[dict]:
    """Preprocessed training batches, ``n_total`` images over all ranks, in
    the train loop's order (:meth:`GPLQTrainLoop.step_loader`). With
    ``what``, progress (images, rate, ETA) is logged every ``progress_s``
    seconds and at the end; the consumer's work is timed too."""
    model = unwrap(runner.model)
    n = math.ceil(n_total / get_world_size())
    loader = runner.train_loop.step_loader() if isinstance(
        runner.train_loop, GPLQTrainLoop) else runner.train_dataloader
    batches = take_images(loader,
                          lambda d: model.data_preprocessor(d, False), n)
    if what is None:
        return batches
    return with_progress(batches, n, f'GPLQ {what}', runner.logger.info,
                         progress_s, ' on this process')
