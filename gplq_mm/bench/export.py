"""Size and speed of exported models, side by side with the FP32 export
(``tools/bench_export.py``, ``make demo-export``; the tests check sizes)."""
from typing import Dict

import numpy as np
import torch

from ..deploy.session import INTEGER_KERNELS, kernel_ops, latency, session
from ..quant.hosts import input_size

__all__ = ['stand_in', 'speed', 'detector_stand_in', 'detector_speed']


def stand_in(config: str, images: int = 2, seed: int = 0, **quant):
    """A GPLQ W4A4 model with the shapes of ``config`` (a shipped
    classification config) and random weights: built from the config with
    no checkpoint, activation steps calibrated on ``images`` random images,
    weights quantized (Stage 2, no QwT fit: there is no data to fit on).
    ``quant``: ``quant_cfg`` fields over the config's. Returns ``(model,
    image_size)``. For size and speed only."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, DefaultScope
    cfg = Config.fromfile(config)
    model_cfg = cfg.model.to_dict()
    model_cfg.update(checkpoint=None, quant_cfg=dict(
        model_cfg.get('quant_cfg') or {}, **quant))
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        model = MODELS.build(model_cfg)
    size = input_size(model.student.backbone)
    g = torch.Generator().manual_seed(seed)
    batch = dict(inputs=torch.randn(images, 3, *size, generator=g))
    model.calibrate([batch])
    model.weight_ptq([batch], qwt=False)
    model.eval()
    return model, size


def speed(fp32: str, runtime: str, inputs: np.ndarray, threads: int = 2,
          repeats: int = 20) -> Dict:
    """Median latency of the FP32 and the runtime model on ``inputs``,
    measured alternately in one process, and the integer / float matmul
    kernels the runtime model ran."""
    sessions = {k: session(p, threads) for k, p in
                (('fp32', fp32), ('runtime', runtime))}
    times = {k: [] for k in sessions}
    for _ in range(3):  # alternate, so drift hits both
        for k, s in sessions.items():
            times[k].append(latency(s, inputs, repeats=repeats // 3 + 1))
    med = {k: float(np.median(v)) for k, v in times.items()}
    ops = kernel_ops(runtime, inputs)
    return dict(
        latency_s=med, ratio=med['runtime'] / med['fp32'],
        integer_kernels=sum(ops.get(k, 0) for k in INTEGER_KERNELS),
        float_matmuls=sum(ops.get(k, 0) for k in ('MatMul', 'Gemm',
                                                  'FusedMatMul')),
        ops=ops)


def detector_speed(cfg, export: str, batches, forms=('fp32', 'runtime'),
                   threads: int = 2, rounds: int = 3) -> Dict:
    """Per-image wall time of each part of the exported detector
    (:meth:`~gplq_mm.deploy.det_runtime.ONNXDetector.parts`) in each of
    ``forms``, measured alternately in this process over ``rounds`` passes
    of ``batches`` (preprocessed ``dict(inputs, data_samples)``; the first
    pass of each form warms up and is dropped); the median pass per part.
    ``cfg``: the GPLQ detector config (a ``Config``)."""
    import copy

    from mmengine.registry import MODELS, DefaultScope

    from ..deploy.det_export import detector_test_config
    models = {}
    for form in forms:
        c = detector_test_config(copy.deepcopy(cfg), export, form)
        c.model['threads'] = threads
        with DefaultScope.overwrite_default_scope('mmdet'):
            models[form] = MODELS.build(c.model)
    passes = {f: [] for f in forms}
    for r in range(rounds + 1):
        for form, model in models.items():
            for b in batches:
                model.predict(b['inputs'], copy.deepcopy(b['data_samples']))
            parts = model.parts()
            if r:
                passes[form].append(parts)
    return {f: {k: float(np.median([p[k] for p in ps])) for k in ps[0]}
            for f, ps in passes.items()}


def detector_stand_in(config: str, canvas=(800, 1344), images: int = 2,
                      seed: int = 0):
    """A GPLQ W4A4 detector of ``config`` (a shipped detection config) in
    deployable mode with random weights, calibrated and weight-quantized
    (no QwT fit) on ``images`` random images at ``canvas``; and
    ``images`` batches of one (``dict(inputs, data_samples)``) at that
    size, with the metadata mmdet's test pipeline writes (an image of the
    canvas minus its size-divisor padding). For size and speed only.
    Returns ``(model, batches, cfg)``."""
    from mmdet.structures import DetDataSample
    from mmengine.config import Config
    from mmengine.registry import MODELS, DefaultScope
    cfg = Config.fromfile(config)
    cfg.model.update(checkpoint=None, method='gplq-deploy')
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    g = torch.Generator().manual_seed(seed)
    h, w = canvas
    meta = dict(img_shape=(h, w - 11), ori_shape=(h, w - 11),
                scale_factor=(1., 1.), pad_shape=(h, w),
                batch_input_shape=(h, w))
    batches = [dict(inputs=torch.randn(1, 3, h, w, generator=g),
                    data_samples=[DetDataSample(metainfo=meta)])
               for _ in range(images)]
    model.eval()
    model.calibrate(batches)  # no ground truth: through predict
    model.weight_ptq(batches, qwt=False)
    model.eval()
    return model, batches, cfg
