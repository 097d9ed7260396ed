"""onnxruntime (CPU) sessions of exported models: opening one, the kernels
it ran, running any batch size through a fixed-batch graph, latency."""
import collections
import json
import os
import statistics
import time
from typing import Dict, Optional

import numpy as np

__all__ = ['INTEGER_KERNELS', 'FLOAT_KERNELS', 'session', 'node_threads',
           'kernel_nodes', 'kernel_ops',
           'run_batched', 'latency']

# onnxruntime kernels that multiply integer codes.
INTEGER_KERNELS = ('MatMulIntegerToFloat', 'QLinearMatMul', 'MatMulInteger',
                   'ConvInteger', 'QLinearConv', 'DynamicQuantizeMatMul')
# onnxruntime kernels that multiply float operands
FLOAT_KERNELS = ('MatMul', 'Gemm', 'FusedMatMul', 'FusedGemm', 'Conv',
                 'FusedConv', 'ConvTranspose', 'NhwcFusedConv')


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


def node_threads(threads: Optional[int] = None) -> Optional[int]:
    """``threads``; when None under a launcher, the node's cores shared
    among its processes (``LOCAL_WORLD_SIZE``), so 8 ranks do not each
    take them all; None (all cores) in one process."""
    from mmengine.dist import get_world_size
    if threads is None and get_world_size() > 1:
        local = int(os.environ.get('LOCAL_WORLD_SIZE', get_world_size()))
        threads = max(1, (os.cpu_count() or 1) // local)
    return threads


def kernel_nodes(model, inputs: np.ndarray) -> Dict[str, str]:
    """``{node name: kernel op type}`` of what onnxruntime ran for ``model``
    on ``inputs``, read from its profile (after its graph optimizations:
    fused nodes carry the name of a node they replaced)."""
    sess = session(model, profile=True)
    run_batched(sess, inputs)
    path = sess.end_profiling()
    try:
        with open(path) as f:
            events = json.load(f)
    finally:
        os.remove(path)
    return {e['name'][:-len('_kernel_time')]: e['args']['op_name']
            for e in events if e.get('cat') == 'Node'
            and e['name'].endswith('_kernel_time')}


def kernel_ops(model, inputs: np.ndarray) -> Dict[str, int]:
    """``{op type: nodes}`` of the kernels onnxruntime ran for ``model`` on
    ``inputs`` (:func:`kernel_nodes`)."""
    return dict(collections.Counter(kernel_nodes(model, inputs).values()))


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
