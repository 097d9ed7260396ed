"""The storage form of an exported runtime model: weight codes packed as
ONNX INT4 (two per byte), optionally the float matrices in FP16, and the
loader back to the runtime model."""
import os.path as osp
from typing import Dict, List

import numpy as np

from .export import onnx_module

__all__ = ['to_storage', 'load_storage', 'open_model']

_FP16 = '.fp16'  # suffix of the FP16 initializers of a float16 storage


def _weight_codes(proto) -> List[str]:
    """Names of the int8 weight-code initializers whose every reader takes
    INT4 too (DequantizeLinear, Cast)."""
    readers = {}
    for n in proto.graph.node:
        for i in n.input:
            readers.setdefault(i, set()).add(n.op_type)
    return sorted(t.name for t in proto.graph.initializer
                  if t.data_type == 3 and len(t.dims) > 1
                  and readers.get(t.name, {''}) <= {'DequantizeLinear',
                                                    'Cast'})


def to_storage(runtime_path: str, path: str, float16: bool = False) -> Dict:
    """Write the storage form of a runtime model: the weight-code
    initializers as INT4, two codes per byte (codes outside [-8, 7] stay
    int8). Lossless:
    :func:`load_storage` gives back the runtime model.

    With ``float16``, the float matrices (two or more axes longer than 1:
    classifier heads, QwT compensators, position embeddings; no quantizer
    reads them) are stored as FP16 too, each cast back to FP32 by a
    ``Cast`` node, so they come back rounded to FP16: smaller, not lossless.
    Steps, biases and norms stay FP32.

    Returns ``path``, ``bytes``, ``packed`` (INT4 tensors), ``halved``
    (FP16 tensors)."""
    onnx = onnx_module()
    import ml_dtypes  # onnx's own dependency
    from onnx import numpy_helper
    proto = onnx.load(runtime_path)
    g = proto.graph
    names = set(_weight_codes(proto))
    packed, casts = 0, []
    for t in g.initializer:
        a, name = numpy_helper.to_array(t), t.name
        if name in names and a.min() >= -8 and a.max() <= 7:
            t.CopyFrom(numpy_helper.from_array(
                a.astype(ml_dtypes.int4), name))  # raw, two per byte
            packed += 1
        elif float16 and a.dtype == np.float32 and sum(
                d > 1 for d in a.shape) > 1:  # matrices, not broadcast steps
            # FP16 initializer + Cast to the FP32 name the graph reads
            t.CopyFrom(numpy_helper.from_array(a.astype(np.float16),
                                               name + _FP16))
            casts.append(onnx.helper.make_node(
                'Cast', [name + _FP16], [name], to=onnx.TensorProto.FLOAT))
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.save(proto, path)
    onnx.checker.check_model(path, full_check=True)
    return dict(path=path, bytes=osp.getsize(path), packed=packed,
                halved=len(casts))


def load_storage(path: str):
    """The runtime model (an ``onnx.ModelProto``) of a storage model: each
    INT4 initializer unpacked to int8, each FP16 one (``float16``) cast
    back to FP32 under its runtime name, nothing else changed. Give it to
    ``onnxruntime.InferenceSession(proto.SerializeToString())``."""
    onnx = onnx_module()
    from onnx import numpy_helper
    proto = onnx.load(path)
    g = proto.graph
    inits = {t.name: i for i, t in enumerate(g.initializer)}
    for t in g.initializer:
        if t.data_type == onnx.TensorProto.INT4:
            t.CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(t).astype(np.int8), t.name))
    keep = []
    for n in g.node:
        if (n.op_type == 'Cast' and n.input[0].endswith(_FP16)
                and n.input[0] in inits):
            t = g.initializer[inits[n.input[0]]]
            t.CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(t).astype(np.float32), n.output[0]))
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    return proto


def open_model(path: str):
    """The runtime model of any exported file (an ``onnx.ModelProto``): a
    storage model (INT4 initializers) through :func:`load_storage`, a
    runtime or FP32 one as it is."""
    onnx = onnx_module()
    proto = onnx.load(path)
    if any(t.data_type == onnx.TensorProto.INT4
           for t in proto.graph.initializer):
        return load_storage(path)
    return proto
