"""GPLQTrainLoop: mmengine's epoch loop, resumable exactly, mid-epoch too.

A resumed run equals the uninterrupted one because no random state has to
be carried over: every draw is a function of where it happens.

* A training sample's augmentation is drawn from (seed, epoch, dataset
  index): each index reaches the dataset tagged with its epoch, and the
  sample seeds python, NumPy and torch before loading. Which worker loads
  it, and what that worker loaded before, no longer matter.
* A training iteration's randomness (drop_path, dropout, ...) is drawn from
  (seed, iteration): python, NumPy and torch (CPU and CUDA) are seeded
  before each iteration.
* The order is the sampler's, from (seed, epoch); a resumed epoch skips the
  index batches it already trained (no image is loaded for them).

The seed is mmengine's (``randomness.seed``; an unseeded config draws one,
which the checkpoint keeps and a resume restores).
"""
import itertools
import random
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.registry import LOOPS
from mmengine.runner import EpochBasedTrainLoop
from torch.utils.data import BatchSampler, DataLoader, Dataset

__all__ = ['GPLQTrainLoop', 'seed_everything']

_SAMPLE, _ITERATION = 0, 1  # keep the two families of seeds apart


def seed_everything(*keys: int) -> None:
    """Seed python, NumPy and torch (CPU and CUDA) from the integers
    ``keys``; distinct keys give unrelated streams.

    >>> seed_everything(0, 1, 2); a = torch.rand(1)
    >>> seed_everything(0, 1, 2); bool(torch.rand(1) == a)
    True
    """
    lo, hi = np.random.SeedSequence([int(k) for k in keys]).generate_state(2)
    random.seed(int(lo))
    np.random.seed(int(lo))
    torch.manual_seed((int(hi) << 32) | int(lo))


class EpochSeededSamples(Dataset):
    """A dataset read with ``(epoch, index)`` keys: each sample is loaded
    right after seeding from (seed, epoch, index). Other attributes
    (``metainfo``, ...) are the wrapped dataset's."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        seed_everything(self.seed, _SAMPLE, epoch, index)
        return self.dataset[index]

    def __getattr__(self, name):
        if name in ('dataset', 'seed'):  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)


class EpochBatches:
    """The host's batch sampler with each index tagged by ``epoch``,
    leaving out the first ``skip`` batches (both set by the loop before
    each epoch; torch may start an iteration twice).

    ``sampler`` is the host's, so mmengine's ``DistSamplerSeedHook`` sets
    its epoch as usual."""

    def __init__(self, batch_sampler):
        self.batch_sampler = batch_sampler
        self.epoch, self.skip = 0, 0

    @property
    def sampler(self):
        return getattr(self.batch_sampler, 'sampler', None)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        epoch = self.epoch
        return ([(epoch, i) for i in batch] for batch in
                itertools.islice(self.batch_sampler, self.skip, None))


@LOOPS.register_module()
class GPLQTrainLoop(EpochBasedTrainLoop):
    """:class:`~mmengine.runner.EpochBasedTrainLoop` whose runs resume
    exactly, from epoch or iteration checkpoints (see the module's
    docstring). Arguments as mmengine's."""

    def __init__(self, runner, dataloader: Union[DataLoader, Dict],
                 max_epochs: int, val_begin: int = 1, val_interval: int = 1,
                 dynamic_intervals: Optional[Sequence] = None) -> None:
        if (runner.cfg.get('randomness') or {}).get('diff_rank_seed'):
            raise ValueError(
                'randomness.diff_rank_seed=True gives each run a random '
                'sampler seed (mmengine), which a resume cannot restore: '
                'GPLQTrainLoop needs it False')
        super().__init__(runner, dataloader, max_epochs, val_begin,
                         val_interval, dynamic_intervals)
        self._dataloader_cfg = dataloader if isinstance(dataloader, dict) \
            else None
        self._seed = runner.seed
        self._wrap(self.dataloader)

    def _wrap(self, host: DataLoader) -> None:
        """Read the host's loader (as mmengine built it) through
        :class:`EpochSeededSamples` and :class:`EpochBatches`."""
        if host.batch_sampler is None:
            raise TypeError('GPLQTrainLoop needs a map-style training '
                            'dataset (one read by index through a batch '
                            'sampler)')
        self._host = host
        self._samples = EpochSeededSamples(host.dataset, self._seed)
        self.dataloader = self._loader(EpochBatches(host.batch_sampler))

    def _loader(self, batches: EpochBatches) -> DataLoader:
        h = self._host  # every other argument stays the host's
        return DataLoader(
            self._samples, batch_sampler=batches, num_workers=h.num_workers,
            collate_fn=h.collate_fn, pin_memory=h.pin_memory,
            timeout=h.timeout, worker_init_fn=h.worker_init_fn,
            multiprocessing_context=h.multiprocessing_context,
            generator=h.generator, prefetch_factor=h.prefetch_factor,
            persistent_workers=h.persistent_workers,
            pin_memory_device=h.pin_memory_device, in_order=h.in_order)

    def step_loader(self) -> DataLoader:
        """Training batches for the steps outside the gradient steps
        (calibration, PCA, Stage 2): this epoch's samples in the sampler's
        order, in plain batches of the training batch size. Not the training
        loader's batch sampler: it may keep state from one iteration to the
        next (mmdet's aspect-ratio buckets), which a partial read would
        leave behind for training."""
        host = self._host.batch_sampler
        try:
            plain = BatchSampler(host.sampler, host.batch_size, False)
        except AttributeError:  # a batch sampler of another shape
            plain = host
        batches = EpochBatches(plain)
        batches.epoch = self._epoch
        return self._loader(batches)

    def run(self) -> torch.nn.Module:
        if self.runner.seed != self._seed:
            # A resume restored the interrupted run's seed (an unseeded
            # config draws one) after mmengine had built the sampler with
            # this run's: rebuild it with the restored one.
            if self._dataloader_cfg is None:
                raise RuntimeError(
                    'the resumed run was seeded with '
                    f'{self.runner.seed}, this one with {self._seed}, and '
                    'the training dataloader was given built: set '
                    'randomness.seed to resume it exactly')
            self._seed = self.runner.seed
            self._wrap(self.runner.build_dataloader(self._dataloader_cfg,
                                                    seed=self._seed))
        return super().run()

    def run_epoch(self) -> None:
        """One epoch, from the first batch it has not trained yet."""
        n = len(self.dataloader)
        done = self._iter - self._epoch * n  # > 0: resumed mid-epoch
        if not 0 <= done <= n:
            raise RuntimeError(
                f'the checkpoint was written at iteration {self._iter}, epoch '
                f'{self._epoch + 1}, but an epoch here has {n} batches: '
                'resume with the data, batch size and number of processes '
                'of the interrupted run')
        batches = self.dataloader.batch_sampler
        batches.epoch, batches.skip = self._epoch, done
        if 0 < done < n:
            self.runner.logger.info(
                f'GPLQ: epoch {self._epoch + 1} resumes at batch {done + 1}/'
                f'{n}, with the batches and random draws of the interrupted '
                'run')
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        for idx, data_batch in enumerate(self.dataloader, start=done):
            self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1

    def run_iter(self, idx, data_batch) -> None:
        seed_everything(self._seed, _ITERATION, self._iter)
        super().run_iter(idx, data_batch)
