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
import importlib.util
from typing import Optional

__all__ = ['classification', 'detection']


def _common(lr: float, batch_size: int, hook: dict,
            log_interval: Optional[int], clip_grad: Optional[dict],
            wrapper_type: Optional[str]) -> dict:
    """AdamW at a constant LR without weight decay or warmup, the last
    epoch's checkpoint kept, the GPLQ hook."""
    optim_wrapper = dict(_delete_=True,
                         optimizer=dict(type='AdamW', lr=lr,
                                        weight_decay=0.0))
    if wrapper_type is not None:
        optim_wrapper['type'] = wrapper_type
    if clip_grad is not None:
        optim_wrapper['clip_grad'] = clip_grad
    # written atomically (gplq_mm.utils.checkpoint.AtomicLocalBackend)
    default_hooks = dict(checkpoint=dict(
        type='CheckpointHook', interval=1, max_keep_ckpts=1,
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
        visualizer=dict(vis_backends=backends),
        train_dataloader=dict(batch_size=batch_size),
        optim_wrapper=optim_wrapper,
        param_scheduler=[],
        default_hooks=default_hooks,
        custom_hooks=[dict(type='GPLQHook', **hook)])


def classification(base, checkpoint: Optional[str], lr: float = 5e-6,
                   batch_size: int = 16, epochs: int = 1,
                   w_bits: int = 4, a_bits: int = 4, alpha: float = 1.0,
                   calib_images: int = 256, pca_images: int = 10000,
                   ptq_images: int = 512,
                   log_interval: Optional[int] = 100) -> dict:
    """GPLQ of an mmpretrain classifier: ``GPLQClassifier`` around the
    host's model, L = L_CE + alpha * L_PCA, the paper's Stage 1 (AdamW,
    constant ``lr``, ``batch_size`` per GPU, ``epochs`` epochs) and Stage 2
    (weight PTQ + QwT on ``ptq_images`` images).

    Args:
        base: The host config (``_base_`` in the config file).
        checkpoint (str, optional): The pretrained FP32 checkpoint (path or
            URL): teacher and starting point.
        log_interval (int, optional): Iterations between log lines; None
            keeps the host's.
        Others: as the model / hook fields of the same names.
    """
    return dict(
        model=dict(_delete_=True, type='GPLQClassifier',
                   architecture=base.model, checkpoint=checkpoint,
                   quant_cfg=dict(w_bits=w_bits, a_bits=a_bits),
                   alpha=alpha),
        train_cfg=dict(by_epoch=True, max_epochs=epochs,
                       val_interval=epochs),
        **_common(lr, batch_size,
                  dict(calib_images=calib_images, pca_images=pca_images,
                       ptq_images=ptq_images), log_interval, None, None))


def detection(base, checkpoint: Optional[str], scope: str = 'backbone',
              lr: float = 5e-6, batch_size: int = 1, epochs: int = 1,
              w_bits: int = 4, a_bits: int = 4, calib_images: int = 256,
              ptq_images: int = 512, clip_grad: Optional[dict] = None,
              log_interval: Optional[int] = None) -> dict:
    """GPLQ of an mmdet two-stage detector: ``GPLQDetector`` around the
    host's model, its own loss, the paper's Stage 1 (AdamW, constant
    ``lr``, ``batch_size`` images per GPU, ``epochs`` epochs) and Stage 2.

    Args:
        scope (str): ``'backbone'`` or ``'full'`` (the whole detector).
        clip_grad (dict, optional): The optimizer wrapper's gradient
            clipping. Defaults to None.
        Others: see :func:`classification`.
    """
    return dict(
        model=dict(_delete_=True, type='GPLQDetector',
                   architecture=base.model, checkpoint=checkpoint,
                   scope=scope, quant_cfg=dict(w_bits=w_bits,
                                               a_bits=a_bits)),
        train_cfg=dict(max_epochs=epochs, val_interval=epochs),
        **_common(lr, batch_size,
                  dict(calib_images=calib_images, ptq_images=ptq_images),
                  log_interval, clip_grad, 'OptimWrapper'))
