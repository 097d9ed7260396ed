"""Size and speed of exported models, side by side with the FP32 export
(``tools/bench_export.py``, ``make demo-export``; the tests check sizes)."""
from typing import Dict

import numpy as np
import torch

from ..deploy.session import INTEGER_KERNELS, kernel_ops, latency, session
from ..quant.hosts import input_size

__all__ = ['stand_in', 'speed', 'runs', 'detector_stand_in',
           'detector_speed', 'detector_speed_table']


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


# What a speed row runs: (label, exported form, runtime). The float
# baselines: onnxruntime FP32 and OpenVINO's FP32 graph in f32 and in its
# default precision (bf16 on these AMX CPUs); the W4A4 runtime file in both
# runtimes' defaults.
RUNS = (('ORT FP32', 'fp32', 'onnxruntime'),
        ('ORT W4A4', 'runtime', 'onnxruntime'),
        ('OV FP32 f32', 'fp32', 'openvino-f32'),
        ('OV FP32 bf16', 'fp32', 'openvino'),
        ('OV W4A4', 'runtime', 'openvino'))


def runs(openvino: bool = True):
    """:data:`RUNS`, the OpenVINO ones only with ``openvino``."""
    return [r for r in RUNS if openvino or r[2] == 'onnxruntime']


def _ratios(med: Dict[str, float]) -> Dict:
    """The W4A4 runs' latency against the fastest float run."""
    floats = {k: v for k, v in med.items() if 'FP32' in k}
    fastest = min(floats, key=floats.get)
    return dict(fastest_float=fastest, ratio_fastest={
        k: v / floats[fastest] for k, v in med.items() if 'W4A4' in k})


def speed(fp32: str, runtime: str, inputs: np.ndarray, threads: int = 2,
          repeats: int = 20, openvino: bool = True) -> Dict:
    """Median latency of the FP32 and the runtime model on ``inputs`` in
    each of :func:`runs` (onnxruntime; with ``openvino`` OpenVINO too),
    measured alternately in one process; ``ratio``: W4A4 / FP32 in
    onnxruntime; ``ratio_fastest``: each W4A4 run against the fastest float
    run (``fastest_float``); the integer / float matmul kernels onnxruntime
    ran for the runtime model."""
    files = dict(fp32=fp32, runtime=runtime)
    sessions = {label: session(files[form], threads, runtime=rt)
                for label, form, rt in runs(openvino)}
    times = {k: [] for k in sessions}
    for _ in range(3):  # alternate, so drift hits all
        for k, s in sessions.items():
            times[k].append(latency(s, inputs, repeats=repeats // 3 + 1))
    med = {k: float(np.median(v)) for k, v in times.items()}
    ops = kernel_ops(runtime, inputs)
    return dict(
        latency_s=med, ratio=med['ORT W4A4'] / med['ORT FP32'],
        **_ratios(med),
        integer_kernels=sum(ops.get(k, 0) for k in INTEGER_KERNELS),
        float_matmuls=sum(ops.get(k, 0) for k in ('MatMul', 'Gemm',
                                                  'FusedMatMul')),
        ops=ops)


def detector_speed(cfg, export: str, batches, threads: int = 2,
                   rounds: int = 3, openvino: bool = True) -> Dict:
    """Per-image wall time of each part of the exported detector
    (:meth:`~gplq_mm.deploy.det_runtime.ONNXDetector.parts`) in each of
    :func:`runs`, measured alternately in this process over ``rounds``
    passes of ``batches`` (preprocessed ``dict(inputs, data_samples)``; the
    first pass of each warms up and is dropped); the median pass per part;
    and ``ratio_fastest`` of the W4A4 runs' totals. ``cfg``: the GPLQ
    detector config (a ``Config``); no score threshold, so that every run
    keeps ``max_per_img`` detections per image. OpenVINO runs in its
    default precision only."""
    import copy

    from mmengine.registry import MODELS, DefaultScope

    from ..deploy.det_export import detector_test_config
    models = {}
    for label, form, rt in runs(openvino):
        if rt == 'openvino-f32':  # the detector's float baselines: its
            continue              # default, bf16, the fastest
        c = detector_test_config(copy.deepcopy(cfg), export, form, rt)
        c.model['threads'] = threads
        # Equal work in every run: with random weights the score threshold
        # keeps a different number of detections per model (8 against 50
        # here), and the mask head and paste cost per detection; without it
        # each image keeps the config's max_per_img, the most any model
        # keeps (the NMS then sees every candidate: docs/deploy.md).
        c.model['architecture']['test_cfg']['rcnn']['score_thr'] = 0.
        with DefaultScope.overwrite_default_scope('mmdet'):
            models[label] = MODELS.build(c.model)
    passes = {k: [] for k in models}
    for r in range(rounds + 1):
        for label, model in models.items():
            for b in batches:
                model.predict(b['inputs'], copy.deepcopy(b['data_samples']))
            parts = model.parts()
            if r:
                passes[label].append(parts)
    out = {k: {p: float(np.median([x[p] for x in ps])) for p in ps[0]}
           for k, ps in passes.items()}
    out.update(_ratios({k: v['total'] for k, v in out.items()}))
    return out


def detector_speed_table(speed: Dict) -> list:
    """Markdown rows of :func:`detector_speed`: ms per image of each part
    in each run, W4A4 against FP32 in onnxruntime and against the fastest
    float run."""
    labels = [k for k in speed if k not in ('fastest_float',
                                            'ratio_fastest')]
    fastest = speed['fastest_float']
    lines = ['| part (ms per image) | ' + ' | '.join(labels)
             + f' | ORT W4A4 / ORT FP32 | OV W4A4 / {fastest} |',
             '|---|' + '---|' * (len(labels) + 2)]
    for part in ('trunk', 'glue', 'bbox', 'mask', 'paste', 'total'):
        ms = ' | '.join(f'{1e3 * speed[k][part]:.1f}' for k in labels)
        ort = speed['ORT W4A4'][part] / max(speed['ORT FP32'][part], 1e-12)
        ov = '-' if 'OV W4A4' not in speed else '{:.2f}x'.format(
            speed['OV W4A4'][part] / max(speed[fastest][part], 1e-12))
        lines.append(f'| {part} | {ms} | {ort:.2f}x | {ov} |')
    lines.append('| detections per image | ' + ' | '.join(
        f'{speed[k]["detections"]:.1f}' for k in labels) + ' | | |')
    return lines


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
