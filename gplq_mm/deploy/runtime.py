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
           'code_agreement', 'ONNXClassifier', 'onnx_test_config',
           'INTEGER_KERNELS']

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
    batch size runs chunks of that size (the last one zero-padded), and each
    output's rows are joined (batch-major, as the graph's outputs and
    Swin's window tensors are)."""
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
        # rows of the images, not the padding (an output may hold several
        # rows per image, batch-major: Swin's windows)
        outs.append([o[:len(o) // batch * (batch - pad)]
                     for o in sess.run(None, {'input': chunk})])
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


def _with_codes(path: str):
    """The model at ``path`` with the input (before its clamp) and the
    output of every QuantizeLinear also graph outputs, in graph (= call)
    order, and each one's zero point."""
    import onnx
    from onnx import numpy_helper
    proto = onnx.load(path)
    consts = {t.name: numpy_helper.to_array(t)
              for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    names, zeros = [], []
    for n in proto.graph.node:
        if n.op_type != 'QuantizeLinear':
            continue
        x = n.input[0]
        while x in producer and producer[x].op_type in ('Clip', 'Min', 'Max'):
            x = producer[x].input[0]
        names += [x, n.output[0]]
        # one zero point per node (per-channel ones are all 0)
        zeros.append(float(consts[n.input[2]].reshape(-1)[0]))
    proto.graph.output.extend(
        onnx.helper.make_empty_tensor_value_info(n) for n in names)
    return proto, zeros


def _codes(q, x: torch.Tensor) -> np.ndarray:
    """``q``'s integer codes of ``x``."""
    from ..quant.functional import broadcast_shape
    step = q.step.detach().to(x.dtype)
    step = step.view(broadcast_shape(x.dim(), q.axis, step.numel()))
    return torch.clamp(torch.round(x / step), q.qmin, q.qmax).numpy()


def _as_patches(codes: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A patch embedding's (B, C, H, W) input in the exported layout
    ``like`` (B, patches, C * k * k)."""
    n, c, h, w = codes.shape
    k = int(round((like.shape[-1] / c)**.5))
    return codes.reshape(n, c, h // k, k, w // k, k).transpose(
        0, 2, 4, 1, 3, 5).reshape(like.shape)


@torch.no_grad()
def code_agreement(model, path: str, batches) -> Dict[str, list]:
    """Per activation quantizer, in call order: the share of elements whose
    integer code onnxruntime computes equal to PyTorch's,

    * ``same_input``: PyTorch's quantizer applied to onnxruntime's own input
      of that quantizer (the export's numerics alone);
    * ``end_to_end``: the PyTorch model's codes, where a code flipped by a
      float-rounding difference upstream changes the inputs downstream.

    ``model`` is the exported GPLQ model, ``path`` its runtime ONNX file,
    ``batches`` preprocessed image tensors."""
    from ..quant import composed_paths, iter_quantizers
    proto, zeros = _with_codes(path)
    sess = session(proto, threads=None)
    graph, _ = model.deploy_graph()
    model.eval()
    counts = np.zeros((3, len(zeros)))  # same input, end to end, elements
    for x in batches:
        calls = []
        handles = [q.register_forward_pre_hook(
            lambda q, args: calls.append((q, _codes(q, args[0]))))
            for _, q in iter_quantizers(model.student, 'act') if q.enabled]
        try:
            with composed_paths(model.student):
                graph(x)
        finally:
            for h in handles:
                h.remove()
        got = run_batched(sess, x.numpy())
        n_out = len(got) - 2 * len(zeros)
        if len(calls) != len(zeros):
            raise RuntimeError(f'{len(zeros)} QuantizeLinear nodes but '
                               f'{len(calls)} quantizer calls')
        for i, (z, (q, ref)) in enumerate(zip(zeros, calls)):
            x_in, codes = got[n_out + 2 * i], got[n_out + 2 * i + 1]
            codes = codes.astype(np.float32) - z
            if ref.ndim == 4 and codes.ndim == 3:  # patch embedding
                ref = _as_patches(ref, codes)
            counts[0, i] += (codes == _codes(q, torch.from_numpy(x_in))
                             ).sum()
            counts[1, i] += (codes == ref).sum()
            counts[2, i] += codes.size
    return dict(same_input=list(counts[0] / counts[2]),
                end_to_end=list(counts[1] / counts[2]))
