"""Size and speed of exported models, side by side with the FP32 export
(``tools/bench_export.py``, ``make demo-export``; the tests check sizes)."""
from typing import Dict

import numpy as np
import torch

from ..deploy.session import INTEGER_KERNELS, kernel_ops, latency, session
from ..quant.hosts import input_size

__all__ = ['stand_in', 'speed']


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
