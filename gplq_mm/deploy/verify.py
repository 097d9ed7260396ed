"""Does the exported model compute what the PyTorch model computes? Output
parity, and per-quantizer integer-code agreement."""
import collections
from typing import Dict

import numpy as np
import torch

from ..quant import composed_paths, iter_quantizers
from ..quant.functional import codes, patchify
from .session import run_batched, session

__all__ = ['parity', 'code_agreement']


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
    return codes(x, q.step.detach().to(x.dtype), q.qmin, q.qmax,
                 q.axis).numpy()


def _as_patches(c: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A patch embedding's (B, C, H, W) input codes in the exported layout
    ``like`` (B, patches, C * k * k), square patches."""
    k = int(round((like.shape[-1] / c.shape[1])**.5))
    return patchify(torch.from_numpy(c), (k, k)).numpy().reshape(like.shape)


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
            x_in = got[n_out + 2 * i]
            ort = got[n_out + 2 * i + 1].astype(np.float32) - z
            if ref.ndim == 4 and ort.ndim == 3:  # patch embedding
                ref = _as_patches(ref, ort)
            counts[0, i] += (ort == _codes(q, torch.from_numpy(x_in))).sum()
            counts[1, i] += (ort == ref).sum()
            counts[2, i] += ort.size
    return dict(same_input=list(counts[0] / counts[2]),
                end_to_end=list(counts[1] / counts[2]))
