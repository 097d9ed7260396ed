"""The GPLQ recipe of each task, for config files: one place for what every
GPLQ config changes in its host's config.

A GPLQ config inherits its host's config and applies the recipe to it; the
file holds only what is its own (the host, the FP32 checkpoint, the batch /
LR row of the paper's table)::

    _base_ = 'mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py'
    from gplq_mm.recipes import classification  # noqa: E402

    globals().update(classification(_base_, checkpoint='...', lr=5e-6))

mmengine runs a text config as Python with the merged base config bound to
``_base_``, and keeps the names the file defines; the recipe's dicts merge
into the host's like any child config's (``_delete_`` where the host's
value is replaced). ``--cfg-options`` overrides the result as usual.
"""
import copy
import importlib.util
from typing import Optional, Tuple

__all__ = ['classification', 'detection', 'without_regularization']


def _common(base, lr: float, batch_size: int, epochs: int, hook: dict,
            checkpoint_interval: int, log_interval: Optional[int],
            clip_grad: Optional[dict], wrapper_type: Optional[str]) -> dict:
    """AdamW at a constant LR without weight decay or warmup, the GPLQ loop
    (exact resume) and hook, a checkpoint every ``checkpoint_interval``
    iterations and at the end of Stage 1 (the latest kept)."""
    if not isinstance(checkpoint_interval, int) or checkpoint_interval < 1:
        raise ValueError(f'checkpoint_interval={checkpoint_interval!r}: use '
                         'an int >= 1 (iterations)')
    optim_wrapper = dict(_delete_=True,
                         optimizer=dict(type='AdamW', lr=lr,
                                        weight_decay=0.0))
    if wrapper_type is not None:
        optim_wrapper['type'] = wrapper_type
    if clip_grad is not None:
        optim_wrapper['clip_grad'] = clip_grad
    # iter_<n>.pth, written atomically (gplq_mm.utils.checkpoint); a run
    # resumes from any of them exactly (gplq_mm.engine.GPLQTrainLoop)
    default_hooks = dict(checkpoint=dict(
        type='CheckpointHook', by_epoch=False, interval=checkpoint_interval,
        save_last=True, max_keep_ckpts=1,
        backend_args=dict(backend='gplq_atomic')))
    if log_interval is not None:
        default_hooks['logger'] = dict(type='LoggerHook',
                                       interval=log_interval)
    # The losses and the mean learned step go to every backend: scalars.json
    # in the work dir, and TensorBoard when it is installed.
    backends = [dict(type='LocalVisBackend')]
    if importlib.util.find_spec('tensorboard') is not None:
        backends.append(dict(type='TensorboardVisBackend'))
    return dict(
        custom_imports=dict(imports=['gplq_mm'], allow_failed_imports=False),
        visualizer=dict(
            type=(base.get('visualizer') or {}).get('type', 'Visualizer'),
            vis_backends=backends),
        train_dataloader=dict(batch_size=batch_size),
        train_cfg=dict(_delete_=True, type='GPLQTrainLoop',
                       max_epochs=epochs, val_interval=epochs),
        optim_wrapper=optim_wrapper,
        param_scheduler=[],
        default_hooks=default_hooks,
        custom_hooks=[dict(type='GPLQHook', **hook)])


# Training-pipeline transforms that regularize (photometric and erasing
# augmentation); the geometric crop / flip and the loading stay.
REGULARIZING_TRANSFORMS = ('RandAugment', 'AutoAugment', 'RandomErasing',
                           'ColorJitter', 'GaussianBlur', 'Lighting',
                           'RandomGrayscale', 'Solarize', 'Posterize')


def without_regularization(base) -> Tuple[dict, dict]:
    """The host's classifier config and training dataset with Stage 1's
    regularization off: no Mixup / CutMix (the classifier's
    ``train_cfg.augments``), plain cross-entropy for label smoothing, no
    drop_path, none of :data:`REGULARIZING_TRANSFORMS`."""
    model = copy.deepcopy(base.model)
    model['train_cfg'] = None
    model['backbone']['drop_path_rate'] = 0.0
    model['head']['loss'] = dict(type='CrossEntropyLoss', loss_weight=1.0)
    try:
        pipeline = base.train_dataloader.dataset.pipeline
    except AttributeError:
        raise ValueError("stage1_regularization='none' needs the host's "
                         'train_dataloader.dataset.pipeline') from None
    return model, dict(pipeline=[
        t for t in pipeline if t['type'] not in REGULARIZING_TRANSFORMS])


def classification(base, checkpoint: Optional[str], lr: float = 5e-6,
                   batch_size: int = 16, epochs: int = 1,
                   w_bits: int = 4, a_bits: int = 4, alpha: float = 1.0,
                   calib_images: int = 256, pca_images: int = 10000,
                   ptq_images: int = 512, checkpoint_interval: int = 2000,
                   stage1_regularization: str = 'host',
                   log_interval: Optional[int] = 100) -> dict:
    """GPLQ of an mmpretrain classifier: ``GPLQClassifier`` around the
    host's model, L = L_CE + alpha * L_PCA, the paper's Stage 1 (AdamW,
    constant ``lr``, ``batch_size`` per GPU, ``epochs`` epochs) and Stage 2
    (weight PTQ + QwT on ``ptq_images`` images).

    Args:
        base: The host config (``_base_`` in the config file).
        checkpoint (str, optional): The pretrained FP32 checkpoint (path or
            URL): teacher and starting point.
        checkpoint_interval (int): Iterations between checkpoints. The
            default, 2000 of the 10,009 iterations of an ImageNet epoch at
            8 x 16 images, is about 7 minutes of DeiT-S Stage 1 on 8 GPUs
            (35 minutes an epoch), more for the larger models.
        stage1_regularization (str): What regularizes the student in
            Stage 1 (the paper says nothing): ``'host'`` keeps what the
            host's config trains with (Mixup / CutMix, label smoothing,
            drop_path, RandAugment, RandomErasing: docs/method.md "What Stage 1
            inherits"); ``'none'`` turns all of them off
            (:func:`without_regularization`), keeping the crop and flip.
        log_interval (int, optional): Iterations between log lines; None
            keeps the host's.
        Others: as the model / hook fields of the same names.
    """
    if stage1_regularization not in ('host', 'none'):
        raise ValueError(f'stage1_regularization={stage1_regularization!r}:'
                         " use 'host' or 'none'")
    architecture, data = base.model, {}
    if stage1_regularization == 'none':
        architecture, data = without_regularization(base)
    common = _common(base, lr, batch_size, epochs,
                     dict(calib_images=calib_images, pca_images=pca_images,
                          ptq_images=ptq_images), checkpoint_interval,
                     log_interval, None, None)
    if data:
        common['train_dataloader']['dataset'] = data
    return dict(
        model=dict(_delete_=True, type='GPLQClassifier',
                   architecture=architecture, checkpoint=checkpoint,
                   quant_cfg=dict(w_bits=w_bits, a_bits=a_bits),
                   alpha=alpha),
        **common)


def detection(base, checkpoint: Optional[str], scope: str = 'backbone',
              lr: float = 5e-6, batch_size: int = 1, epochs: int = 1,
              w_bits: int = 4, a_bits: int = 4, calib_images: int = 256,
              ptq_images: int = 512, clip_grad: Optional[dict] = None,
              checkpoint_interval: int = 2000,
              log_interval: Optional[int] = None) -> dict:
    """GPLQ of an mmdet two-stage detector: ``GPLQDetector`` around the
    host's model, its own loss, the paper's Stage 1 (AdamW, constant
    ``lr``, ``batch_size`` images per GPU, ``epochs`` epochs) and Stage 2.

    Args:
        scope (str): ``'backbone'`` or ``'full'`` (the whole detector).
        clip_grad (dict, optional): The optimizer wrapper's gradient
            clipping. Defaults to None.
        checkpoint_interval (int): Iterations between checkpoints; the
            default is 2000 of the ~14,700 iterations of a COCO epoch at
            8 x 1 images.
        Others: see :func:`classification`.
    """
    return dict(
        model=dict(_delete_=True, type='GPLQDetector',
                   architecture=base.model, checkpoint=checkpoint,
                   scope=scope, quant_cfg=dict(w_bits=w_bits,
                                               a_bits=a_bits)),
        **_common(base, lr, batch_size, epochs,
                  dict(calib_images=calib_images, ptq_images=ptq_images),
                  checkpoint_interval, log_interval, clip_grad,
                  'OptimWrapper'))
