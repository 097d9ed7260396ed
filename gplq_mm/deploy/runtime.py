"""Run exported models in onnxruntime (CPU): sessions, the kernels a
session ran, latency, and :class:`ONNXClassifier`, which evaluates an
exported classifier through the config's own dataloader, preprocessor and
metric (``tools/test.py CONFIG MODEL.onnx``)."""
import collections
import json
import os
import statistics
import time
from typing import Dict, Optional

import numpy as np
import torch
from mmengine.model import BaseModel
from mmengine.registry import MODELS

__all__ = ['session', 'kernel_ops', 'run_batched', 'latency', 'parity',
           'ONNXClassifier', 'onnx_test_config', 'INTEGER_KERNELS']

# onnxruntime kernels that multiply integer codes.
INTEGER_KERNELS = ('MatMulIntegerToFloat', 'QLinearMatMul', 'MatMulInteger',
                   'ConvInteger', 'QLinearConv', 'DynamicQuantizeMatMul')


def session(model, threads: Optional[int] = 2, profile: bool = False):
    """An onnxruntime CPU session of ``model`` (a path or an
    ``onnx.ModelProto``) with ``threads`` intra-op threads (None: all)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.enable_profiling = profile
    if profile:
        opts.profile_file_prefix = os.path.join(
            os.environ.get('TMPDIR', '/tmp'), f'gplq_ort_{os.getpid()}')
    if not isinstance(model, (str, os.PathLike)):
        model = model.SerializeToString()
    return ort.InferenceSession(model, opts,
                                providers=['CPUExecutionProvider'])


def kernel_ops(model, inputs: np.ndarray) -> Dict[str, int]:
    """``{op type: nodes}`` of the kernels onnxruntime ran for ``model`` on
    ``inputs``, read from its profile (after its graph optimizations)."""
    sess = session(model, profile=True)
    sess.run(None, {'input': inputs})
    path = sess.end_profiling()
    try:
        with open(path) as f:
            events = json.load(f)
    finally:
        os.remove(path)
    nodes = {e['name'][:-len('_kernel_time')]: e['args']['op_name']
             for e in events if e.get('cat') == 'Node'
             and e['name'].endswith('_kernel_time')}
    return dict(collections.Counter(nodes.values()))


def run_batched(sess, x: np.ndarray) -> list:
    """``sess``'s outputs on the batch ``x``; a model exported with a fixed
    batch size runs chunks of that size (the last one zero-padded)."""
    batch = sess.get_inputs()[0].shape[0]
    if not isinstance(batch, int) or batch == len(x):
        return sess.run(None, {'input': x})
    outs = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        pad = batch - len(chunk)
        if pad:
            chunk = np.concatenate(
                [chunk, np.zeros((pad, ) + chunk.shape[1:], chunk.dtype)])
        outs.append([o[:batch - pad] for o in sess.run(None,
                                                       {'input': chunk})])
    return [np.concatenate(o) for o in zip(*outs)]


def latency(sess, inputs: np.ndarray, repeats: int = 20,
            warmup: int = 3) -> float:
    """Median wall time (seconds) of one ``sess.run`` on ``inputs``."""
    for _ in range(warmup):
        sess.run(None, {'input': inputs})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {'input': inputs})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@MODELS.register_module()
class ONNXClassifier(BaseModel):
    """An exported classifier (``tools/export.py``) as an mmengine model:
    the host's data preprocessor runs in PyTorch, the ONNX graph in
    onnxruntime, and predictions are written as mmpretrain's heads write
    them (``pred_score`` = softmax of the logits, ``pred_label``), so the
    config's metric measures it exactly like the PyTorch model.

    Args:
        onnx_file (str): The ``.onnx`` model (runtime or FP32 form; a storage
            model is loaded through :func:`~gplq_mm.deploy.load_storage`).
        data_preprocessor (dict): The host classifier's preprocessor.
        threads (int, optional): onnxruntime intra-op threads.
            Defaults to None (all cores).
    """

    def __init__(self, onnx_file: str, data_preprocessor: dict,
                 threads: Optional[int] = None, init_cfg=None):
        data_preprocessor = dict(data_preprocessor)
        # as mmpretrain's ImageClassifier builds its own
        data_preprocessor.setdefault('type', 'mmpretrain.ClsDataPreprocessor')
        super().__init__(data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        import onnx

        from .onnx import load_storage
        proto = onnx.load(onnx_file)
        if any(t.data_type == onnx.TensorProto.INT4
               for t in proto.graph.initializer):
            proto = load_storage(onnx_file)
        self.onnx_file = onnx_file
        self.session = session(proto, threads)
        batch = self.session.get_inputs()[0].shape[0]
        self.batch = batch if isinstance(batch, int) else None

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's output (:func:`run_batched`)."""
        return torch.from_numpy(run_batched(
            self.session, inputs.float().cpu().numpy())[0])

    def forward(self, inputs: torch.Tensor, data_samples=None,
                mode: str = 'predict'):
        logits = self.logits(inputs)
        if mode == 'tensor':
            return logits
        if mode != 'predict':
            raise ValueError(f'ONNXClassifier evaluates only (mode='
                             f"'predict' / 'tensor'), got mode={mode!r}")
        from mmpretrain.structures import DataSample
        scores = logits.softmax(dim=1)
        labels = scores.argmax(dim=1, keepdim=True)
        if data_samples is None:
            data_samples = [DataSample() for _ in range(len(scores))]
        for sample, score, label in zip(data_samples, scores, labels):
            sample.set_pred_score(score).set_pred_label(label)
        return data_samples


def onnx_test_config(cfg, onnx_file: str):
    """``cfg`` (a GPLQ classifier config) rewritten to evaluate
    ``onnx_file`` with :class:`ONNXClassifier`: the same dataloader,
    preprocessor and metric; the GPLQ hooks and the checkpoint load go."""
    model = cfg.model
    if model.get('type') != 'GPLQClassifier':
        raise ValueError(
            f'{onnx_file}: tools/test.py evaluates exported classifiers '
            f'(model.type GPLQClassifier), this config builds '
            f'{model.get("type")}. A detector export holds the backbone only: '
            'tools/export.py --check N reports its feature-map parity')
    pre = (model['architecture'].get('data_preprocessor')
           or model.get('data_preprocessor') or cfg.get('data_preprocessor')
           or {})
    cfg.model = dict(type='ONNXClassifier', onnx_file=onnx_file,
                     data_preprocessor=dict(pre))
    cfg.custom_hooks = [h for h in cfg.get('custom_hooks') or []
                        if not str(h.get('type', '')).startswith('GPLQ')]
    cfg.load_from = None
    return cfg


@torch.no_grad()
def parity(model, sess, batches) -> Dict[str, float]:
    """Compare ``model``'s :meth:`deploy_graph` (PyTorch) with ``sess`` on
    ``batches`` (preprocessed image tensors): per output, the largest
    absolute difference and the relative L2 error; for one output (a
    classifier's logits), also the share of images whose argmax agrees."""
    graph, _ = model.deploy_graph()
    model.eval()
    stats = collections.defaultdict(float)
    images = 0
    for x in batches:
        ref = graph(x)
        ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        got = run_batched(sess, x.numpy())
        for i, (r, g) in enumerate(zip(ref, got)):
            r = r.numpy()
            key = '' if len(ref) == 1 else f'[{i}]'
            stats[f'max_abs{key}'] = max(stats[f'max_abs{key}'],
                                         float(np.abs(r - g).max()))
            stats[f'sq_err{key}'] += float(((r - g)**2).sum())
            stats[f'sq_ref{key}'] += float((r**2).sum())
        if len(ref) == 1:
            stats['agree'] += float(
                (ref[0].numpy().argmax(1) == got[0].argmax(1)).sum())
        images += len(x)
    out = {}
    for k, v in stats.items():
        if k.startswith('sq_err'):
            key = k[len('sq_err'):]
            out[f'rel_l2{key}'] = (v / max(stats[f'sq_ref{key}'], 1e-30))**.5
        elif k == 'agree':
            out['agreement'] = v / images
        elif k.startswith('max_abs'):
            out[k] = v
    out['images'] = images
    return out
