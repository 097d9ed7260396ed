"""GPLQHook: switches the stages around mmengine's ordinary train loop."""
import json
import math
import os.path as osp
import resource
import time
from typing import Iterator, List, Optional

import torch
from mmengine.dist import get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ..quant import iter_quantizers
from ..quant.qwt import TARGETS as QWT_TARGETS
from ..utils.checkpoint import ATOMIC_BACKEND
from ..utils.data import take_images
from .loops import GPLQTrainLoop

__all__ = ['GPLQHook']


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


@HOOKS.register_module()
class GPLQHook(Hook):
    """Runs what GPLQ does outside the gradient steps.

    * ``before_train`` (skipped for what a loaded / resumed checkpoint
      already holds): calibrate the activation quantizers on
      ``calib_images`` training images (Stage 1 starts), and fit the PCA of
      the teacher's penultimate features on ``pca_images`` images.
    * ``after_train``: save the Stage-1 model (``<method>_stage1.pth``),
      run Stage 2 (weight PTQ + QwT on ``ptq_images`` training images),
      save ``<work_dir>/<final_name>``, and evaluate it when a validation
      loop is configured.

    Wall times, peak memory, the PCA dimension and the QwT fits go to
    ``<work_dir>/gplq_stats.json``.

    All image counts are totals over all processes.

    Args:
        calib_images (int): Defaults to 256.
        pca_images (int): Defaults to 5000.
        ptq_images (int): Defaults to 512.
        qwt (bool): Fit QwT compensators. Defaults to True.
        qwt_ridge (float): Relative ridge term of the QwT solve.
            Defaults to 1e-4.
        qwt_target (str): What QwT's compensator of a block predicts:
            ``'same_input'`` (the paper's: the block's FP32-weight output
            minus its 4-bit-weight output, on the same quantized input) or
            ``'chained'`` (the block's output in a W32A4 pass minus its
            output in the W4A4 pass, which also holds the drift of the
            blocks before). Defaults to ``'same_input'``.
        weight_ptq (bool): Run Stage 2 after training. Defaults to True.
        final_name (str, optional): Name of the final checkpoint. Defaults to
            None: ``<method>_w<w_bits>a<a_bits>.pth``, e.g.
            ``gplq_w4a4.pth``.
    """
    priority = 'NORMAL'
    PROGRESS_S = 10.0  # seconds between progress lines of long steps

    def __init__(self,
                 calib_images: int = 256,
                 pca_images: int = 5000,
                 ptq_images: int = 512,
                 qwt: bool = True,
                 qwt_ridge: float = 1e-4,
                 qwt_target: str = 'same_input',
                 weight_ptq: bool = True,
                 final_name: Optional[str] = None):
        for name, v in (('calib_images', calib_images),
                        ('pca_images', pca_images),
                        ('ptq_images', ptq_images)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f'GPLQHook.{name}={v!r}: use an int >= 1')
        if qwt_target not in QWT_TARGETS:
            raise ValueError(f'GPLQHook.qwt_target={qwt_target!r}: use one '
                             f'of {QWT_TARGETS}')
        self.qwt_target = qwt_target
        self.calib_images, self.pca_images = calib_images, pca_images
        self.ptq_images, self.qwt, self.qwt_ridge = ptq_images, qwt, qwt_ridge
        self.weight_ptq, self.final_name = weight_ptq, final_name
        self.stats = {}

    @staticmethod
    def _peak_memory_mb() -> float:
        """Peak GPU memory allocated when on CUDA, else peak host RSS."""
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch.cuda.max_memory_allocated() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _reset_peak(self) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()

    def _dump(self, runner) -> None:
        if is_main_process():
            with open(osp.join(runner.work_dir, 'gplq_stats.json'), 'w') as f:
                json.dump(self.stats, f, indent=2)

    # -- data ---------------------------------------------------------------
    def _check_size(self, runner, name: str, n: int) -> None:
        size = len(runner.train_dataloader.dataset)
        if size == 0:
            raise ValueError(
                'the training set is empty: check train_dataloader.dataset '
                '(data_root, ann_file, data_prefix)')
        if n > size:
            raise ValueError(
                f'GPLQHook.{name}={n} but the training set has only {size} '
                f'images; lower {name} or use a larger dataset')

    def _batches(self, runner, n_total: int,
                 what: Optional[str] = None) -> Iterator[dict]:
        """Preprocessed training batches, ``n_total`` images over all
        ranks. With ``what``, progress (images, rate, ETA) is logged every
        ``PROGRESS_S`` seconds and at the end."""
        model = _unwrap(runner.model)
        n = math.ceil(n_total / get_world_size())
        loader = runner.train_loop.step_loader() if isinstance(
            runner.train_loop, GPLQTrainLoop) else runner.train_dataloader
        seen, t0, last = 0, time.time(), time.time()
        for data in take_images(loader,
                                lambda d: model.data_preprocessor(d, False),
                                n):
            yield data  # the consumer's work is timed too
            seen += len(data['inputs'])
            now = time.time()
            if what and (seen >= n or now - last >= self.PROGRESS_S):
                last = now
                rate = seen / max(now - t0, 1e-9)
                runner.logger.info(
                    f'GPLQ {what}: {seen}/{n} images on this process, '
                    f'{rate:.1f} images/s, ETA {(n - seen) / rate:.0f}s')

    # -- hooks --------------------------------------------------------------
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Record what the quantizer state means (``meta['gplq']``)."""
        checkpoint.setdefault('meta', {})['gplq'] = _unwrap(
            runner.model).signature()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Refuse, before anything is loaded, a GPLQ checkpoint written by
        another method or bit width (a float checkpoint has no record), or
        one whose tensors have other shapes (e.g. another number of
        classes): mmengine's non-strict load would only warn."""
        model = _unwrap(runner.model)
        source = repr(runner.cfg.get('load_from') or 'the checkpoint')
        saved = (checkpoint.get('meta') or {}).get('gplq')
        if saved is not None:
            model.check_signature(saved, source)
        state = checkpoint.get('state_dict', checkpoint)
        own = model.state_dict()
        bad = [f'{k}: {tuple(v.shape)} in the checkpoint, '
               f'{tuple(own[k].shape)} in the model'
               for k, v in state.items() if isinstance(v, torch.Tensor)
               and k in own and v.shape != own[k].shape]
        if bad:
            raise ValueError(f'{source} does not fit this model ('
                             f'{len(bad)} tensors of another shape; another '
                             'number of classes?): ' + '; '.join(bad[:3]))

    def before_train(self, runner) -> None:
        model = _unwrap(runner.model)
        self._check_size(runner, 'calib_images', self.calib_images)
        self._check_size(runner, 'ptq_images', self.ptq_images)
        if model.needs_prepare:
            self._check_size(runner, 'pca_images', self.pca_images)
        model.check_data(next(self._batches(runner, 1)))
        if not model.trains:
            # A PTQ baseline: calibrate, then straight to Stage 2.
            runner.train_loop.stop_training = True
        if model.stage == 0:
            t = time.time()
            n = model.calibrate(self._batches(runner, self.calib_images,
                                              'calibration'))
            self.stats['calibration_s'] = time.time() - t
            runner.logger.info(
                f'GPLQ: calibrated {n} activation quantizers on '
                f'{self.calib_images} images in {time.time() - t:.1f}s; ' +
                ('Stage 1 starts' if model.trains else
                 f'{model.method} trains nothing: on to Stage 2'))
        else:
            runner.logger.info(f'GPLQ: model loaded at stage {model.stage}; '
                               'calibration skipped')
        if model.needs_prepare:
            t = time.time()
            self.stats.update(model.prepare(
                self._batches(runner, self.pca_images, 'PCA')))
            self.stats['pca_s'] = time.time() - t
        # the steps whose mean is logged every iteration (found once)
        self._trained_steps = {
            role: [q.step for _, q in iter_quantizers(model.student, role)
                   if q.enabled and q.step.requires_grad]
            for role in ('act', 'weight')}
        self._reset_peak()
        self._t_stage1 = time.time()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        """The mean learned step of the activation quantizers (and of the
        weight quantizers where they train) joins the losses in the log and
        in the visualizer's backends (``train/act_step_mean``)."""
        for role, steps in self._trained_steps.items():
            if steps:
                mean = torch.cat([s.detach().reshape(-1) for s in steps])
                runner.message_hub.update_scalar(f'train/{role}_step_mean',
                                                 float(mean.float().mean()))

    def after_train(self, runner) -> None:
        self.stats.update(stage1_s=time.time() - self._t_stage1,
                          stage1_peak_mem_mb=self._peak_memory_mb())
        self._dump(runner)
        model = _unwrap(runner.model)
        if model.trains and model.stage == 1:
            self._save(runner, f'{model.method}_stage1.pth')
        if not self.weight_ptq:
            return
        if model.stage >= 2:
            runner.logger.info('GPLQ: model already at W4A4; Stage 2 skipped')
            return
        t = time.time()
        self._reset_peak()
        batches: List[dict] = list(
            self._batches(runner, self.ptq_images, 'Stage-2 data'))
        r2 = model.weight_ptq(
            batches, qwt=self.qwt, ridge=self.qwt_ridge,
            qwt_target=self.qwt_target, logger=runner.logger.info)
        self.stats.update(stage2_s=time.time() - t,
                          stage2_peak_mem_mb=self._peak_memory_mb(),
                          qwt_r2=r2)
        self._dump(runner)
        runner.logger.info(
            f'GPLQ: Stage 2 (weight PTQ{" + QwT" if r2 else ""}) on '
            f'{self.ptq_images} images took {time.time() - t:.1f}s')
        qc = model.quant_cfg
        self._save(runner, self.final_name or
                   f'{model.method}_w{qc.w_bits}a{qc.a_bits}.pth')
        if runner.val_loop is not None:
            runner.val_loop.run()

    @staticmethod
    def _save(runner, name: str) -> None:
        """The model (no optimizer state) to ``<work_dir>/<name>``,
        atomically."""
        runner.save_checkpoint(
            runner.work_dir, name, save_optimizer=False,
            save_param_scheduler=False,
            backend_args=dict(backend=ATOMIC_BACKEND))
        runner.logger.info(f'GPLQ: checkpoint saved to '
                           f'{runner.work_dir}/{name}')
