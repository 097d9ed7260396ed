"""GPLQHook: switches the stages around mmengine's ordinary train loop."""
from typing import List, Optional

import torch
from mmengine.hooks import Hook, LoggerHook
from mmengine.registry import HOOKS

from ..analysis import weight_drift
from ..models.methods import stage1_name
from ..models.signature import check_checkpoint
from ..quant import iter_quantizers
from ..quant.qwt import TARGETS as QWT_TARGETS
from ..utils.checkpoint import ATOMIC_BACKEND
from .stats import RunStats
from .steps import check_image_count, step_batches, unwrap

__all__ = ['GPLQHook']


@HOOKS.register_module()
class GPLQHook(Hook):
    """Runs what GPLQ does outside the gradient steps.

    * ``before_train`` (skipped for what a loaded / resumed checkpoint
      already holds): calibrate the activation quantizers on
      ``calib_images`` training images (Stage 1 starts), and fit the PCA of
      the teacher's penultimate features on ``pca_images`` images.
    * ``after_train``: measure how far the latent weights moved from the
      FP32 checkpoint (:func:`~gplq_mm.analysis.weight_drift`; PTQ methods
      too), save the Stage-1 model (``<method>_stage1.pth``), run Stage 2
      (weight PTQ + QwT on ``ptq_images`` training images), save
      ``<work_dir>/<final_name>``, and evaluate it when a validation loop
      is configured.
    * checkpoints record what their quantizer state means, and a checkpoint
      that does not fit the model is refused before it is loaded
      (:mod:`gplq_mm.models.signature`).

    Wall times, peak memory, the PCA dimension, the weight drift and the
    QwT fits go to ``<work_dir>/gplq_stats.json``
    (:class:`~gplq_mm.engine.stats.RunStats`).

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
        self.stats = RunStats()

    # -- checkpoints --------------------------------------------------------
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Record what the quantizer state means (``meta['gplq']``)."""
        checkpoint.setdefault('meta', {})['gplq'] = unwrap(
            runner.model).signature()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Refuse a checkpoint that does not fit the model, before it is
        loaded."""
        check_checkpoint(unwrap(runner.model), checkpoint,
                         repr(runner.cfg.get('load_from') or
                              'the checkpoint'))

    # -- the stages ---------------------------------------------------------
    def before_train(self, runner) -> None:
        model = unwrap(runner.model)
        if model.internal_fp32:
            raise ValueError('model.internal_fp32=True runs every quantizer '
                             'off: it evaluates a checkpoint (tools/test.py)'
                             ', it cannot train one')
        check_image_count(runner, 'calib_images', self.calib_images)
        check_image_count(runner, 'ptq_images', self.ptq_images)
        if model.needs_prepare:
            check_image_count(runner, 'pca_images', self.pca_images)
        model.check_data(next(step_batches(runner, 1)))
        if not model.trains:
            # A PTQ baseline: calibrate, then straight to Stage 2.
            runner.train_loop.stop_training = True
        if model.stage == 0:
            self.stats.start('calibration')
            n = model.calibrate(step_batches(runner, self.calib_images,
                                             'calibration'))
            spent = self.stats.stop('calibration')
            runner.logger.info(
                f'GPLQ: calibrated {n} activation quantizers on '
                f'{self.calib_images} images in {spent:.1f}s; ' +
                ('Stage 1 starts' if model.trains else
                 f'{model.method} trains nothing: on to Stage 2'))
        else:
            runner.logger.info(f'GPLQ: model loaded at stage {model.stage}; '
                               'calibration skipped')
        if model.needs_prepare:
            self.stats.start('pca')
            self.stats.update(model.prepare(
                step_batches(runner, self.pca_images, 'PCA')))
            self.stats.stop('pca')
        # the steps whose mean is logged, and when: found once
        self._log_interval = next((h.interval for h in runner.hooks
                                   if isinstance(h, LoggerHook)), 1)
        self._trained_steps = {
            role: [q.step for _, q in iter_quantizers(model.student, role)
                   if q.enabled and q.step.requires_grad]
            for role in ('act', 'weight')}
        self.stats.start('stage1')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        """The mean learned step of the activation quantizers (and of the
        weight quantizers where they train) joins the losses in the log and
        in the visualizer's backends (``train/act_step_mean``), on the
        iterations the LoggerHook logs: reading it waits for the device."""
        if not (self.every_n_train_iters(runner, self._log_interval) or
                self.end_of_epoch(runner.train_dataloader, batch_idx)):
            return
        for role, steps in self._trained_steps.items():
            if steps:
                mean = torch.cat([s.detach().reshape(-1) for s in steps])
                runner.message_hub.update_scalar(f'train/{role}_step_mean',
                                                 float(mean.float().mean()))

    def after_train(self, runner) -> None:
        self.stats.stop('stage1', memory=True)
        model = unwrap(runner.model)
        if model.stage < 2:  # the latent weights before Stage 2's folding
            drift = weight_drift(model.student, model.teacher)
            self.stats['weight_drift'] = drift
            runner.logger.info(
                'GPLQ: weight drift from the FP32 checkpoint, mean over '
                f"{len(drift['layers'])} layers: MAE {drift['mae_mean']:.3g}"
                f", MSE {drift['mse_mean']:.3g}")
        self.stats.dump(runner.work_dir)
        if model.trains and model.stage == 1:
            self._save(runner, stage1_name(model.method))
        if not self.weight_ptq:
            return
        if model.stage >= 2:
            runner.logger.info('GPLQ: model already at W4A4; Stage 2 skipped')
            return
        self.stats.start('stage2')
        batches: List[dict] = list(
            step_batches(runner, self.ptq_images, 'Stage-2 data'))
        r2 = model.weight_ptq(
            batches, qwt=self.qwt, ridge=self.qwt_ridge,
            qwt_target=self.qwt_target, logger=runner.logger.info)
        spent = self.stats.stop('stage2', memory=True)
        self.stats['qwt_r2'] = r2
        self.stats.dump(runner.work_dir)
        runner.logger.info(
            f'GPLQ: Stage 2 (weight PTQ{" + QwT" if r2 else ""}) on '
            f'{self.ptq_images} images took {spent:.1f}s')
        self._save(runner, self.final_name or model.checkpoint_name())
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
