"""Export a GPLQ model to ONNX: the W4A4 runtime model, its INT4 storage
form, and the FP32 baseline, all by the same code.

* **runtime** (``*_w{b}a{b}.onnx``): weights as int8 initializers holding
  ``b``-bit codes, each followed by ``DequantizeLinear`` (one scale per output
  channel); every quantized input as ``QuantizeLinear`` /
  ``DequantizeLinear`` with its learned step (:mod:`gplq_mm.quant.qdq`);
  QwT compensators as FP32 ``MatMul`` + ``Add``. onnxruntime runs a
  quantized Linear as an integer kernel when its input has one scale (the
  deployable mode, ``quant_cfg.deployable=True``); per-channel
  (paper-faithful) inputs and their layers run in float with the same
  values (see :mod:`gplq_mm.quant.qdq`).
* **storage** (``*_w{b}a{b}_int4.onnx``): the same graph with the weight codes
  packed as ONNX INT4 (two per byte); :func:`load_storage` turns it into the
  runtime model. Optionally (``float16``) the unquantized float matrices in
  FP16 too (lossy).
* **fp32** (``*_fp32.onnx``): the same model with every quantizer and
  compensator off.
"""
import contextlib
import os.path as osp
import warnings
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

from ..quant import iter_quantizers
from ..quant.layers import is_quant_layer
from ..quant.qdq import one_step

__all__ = ['MIN_OPSET', 'export_onnx', 'check_exportable', 'check_opset',
           'to_storage', 'load_storage', 'FORMS']

MIN_OPSET = 21  # INT4 tensors, per-axis QuantizeLinear / DequantizeLinear
FORMS = ('runtime', 'fp32')
_FP16 = '.fp16'  # suffix of the FP16 initializers of a float16 storage


def _onnx():
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - pinned in requirements
        raise ImportError('ONNX export needs `onnx` (pip install -r '
                          'requirements.txt)') from e
    return onnx


def check_exportable(model: nn.Module, source: str = 'the model') -> List[str]:
    """Raise a clear error when ``model`` (a GPLQ wrapper) cannot be exported
    as a quantized model; else return the names of quantized layers whose
    input has per-channel steps (they export with float semantics)."""
    stage = getattr(model, 'stage', None)
    if stage is None:
        raise TypeError(f'{source} is a {type(model).__name__}, not a GPLQ '
                        'model (GPLQClassifier / GPLQDetector)')
    if stage < 2:
        what = 'a float checkpoint (stage 0)' if stage == 0 else \
            'a Stage-1 checkpoint (activations quantized, weights float)'
        raise ValueError(
            f'{source} is {what}: only a W{model.quant_cfg.w_bits}A'
            f'{model.quant_cfg.a_bits} model (after Stage 2, e.g. '
            f'{model.method}_w4a4.pth) exports as a quantized ONNX model; '
            "export the FP32 baseline with form='fp32'")
    for name, q in iter_quantizers(model.student):
        if q.enabled and q.grid != 'uniform':
            raise ValueError(
                f'student.{name} quantizes on the {q.grid!r} grid, which has '
                'no ONNX export rule (QuantizeLinear is uniform); export a '
                "model with softmax_grid='uniform'")
    return [n for n, m in model.student.named_modules()
            if is_quant_layer(m) and m.input_quantizer.enabled
            and not one_step(m.input_quantizer.step)]


def check_opset(opset: int) -> None:
    """Raise when ``opset`` is below :data:`MIN_OPSET`."""
    if opset < MIN_OPSET:
        raise ValueError(f'opset={opset} is below {MIN_OPSET}, the first '
                         'with INT4 and per-axis QuantizeLinear; use '
                         f'--opset {MIN_OPSET} or higher')


@contextlib.contextmanager
def _float(model: nn.Module, on: bool):
    """With ``on``: the model as float (stage 0, compensators off), by its
    own stage switch; restored on exit."""
    stage, use_qwt = model.stage, model.use_qwt
    if on:
        model.use_qwt = False
        model.set_stage(0)
    try:
        yield
    finally:
        model.use_qwt = use_qwt
        model.set_stage(stage)


def _fold_constants(proto) -> int:
    """Replace each node whose inputs are all constant by initializers
    (evaluated with onnx's reference implementation), up to the 8-bit
    codes: the weight codes become int8 initializers, named
    ``<layer scope>/weight_codes``, and what reads them (DequantizeLinear,
    Cast, ConvInteger) stays.
    Returns the number of nodes folded."""
    onnx = _onnx()
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator
    g = proto.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    keep, n = [], 0
    for node in g.node:
        if node.op_type == 'Constant':
            consts[node.output[0]] = numpy_helper.to_array(
                node.attribute[0].t)
            n += 1
            continue
        if node.op_type != 'DequantizeLinear' and node.input and all(
                i in consts or i == '' for i in node.input) and not any(
                    consts[i].dtype in (np.int8, np.uint8)
                    for i in node.input if i):
            single = onnx.helper.make_model(
                onnx.helper.make_graph([node], 'fold', [], [
                    onnx.helper.make_tensor_value_info(o, 0, None)
                    for o in node.output]),
                opset_imports=proto.opset_import)
            outs = ReferenceEvaluator(single).run(
                None, {i: consts[i] for i in node.input if i})
            consts.update(zip(node.output, outs))
            n += 1
            continue
        keep.append(node)
    # the weight codes by their layer's name: '<scope>/weight_codes'
    names = {}
    for node in keep:
        if node.op_type in ('DequantizeLinear', 'Cast', 'ConvInteger'):
            i = 1 if node.op_type == 'ConvInteger' else 0
            a = consts.get(node.input[i])
            if a is not None and a.dtype == np.int8 and a.ndim > 1:
                if node.input[i] not in names:  # unique, scopes may repeat
                    base = node.name.rsplit('/', 1)[0] + '/weight_codes'
                    new, k = base, 1
                    while new in names.values() or new in consts:
                        new, k = f'{base}_{k}', k + 1
                    names[node.input[i]] = new
                node.input[i] = names[node.input[i]]
    consts.update({new: consts[old] for old, new in names.items()})
    used = {i for node in keep for i in node.input} | {
        o.name for o in g.output}
    del g.node[:]
    g.node.extend(keep)
    del g.initializer[:]
    g.initializer.extend(numpy_helper.from_array(np.asarray(v), k)
                         for k, v in consts.items() if k in used)
    return n


def _trace(graph: nn.Module, inputs: torch.Tensor, path: str,
           outputs: List[str], opset: int, dynamic: bool) -> bool:
    """Trace ``graph`` to ``path`` (constants folded, checked). With
    ``dynamic``, the batch axis is symbolic; returns whether onnxruntime
    then computes a batch of two images as each image alone (a host that
    computes ``int(x.shape[0] / ...)`` bakes the traced batch size in, and
    another batch size would run silently wrong)."""
    onnx = _onnx()
    axes = {n: {0: 'batch'} for n in ['input'] + outputs} if dynamic else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # tracer warnings on shapes
        torch.onnx.export(graph, (inputs, ), path, dynamo=False,
                          opset_version=opset, input_names=['input'],
                          output_names=outputs, dynamic_axes=axes,
                          do_constant_folding=True)
    proto = onnx.load(path)
    _fold_constants(proto)
    onnx.save(proto, path)
    onnx.checker.check_model(path, full_check=True)
    if not dynamic:
        return False
    from .runtime import session
    sess = session(path)
    one = inputs[:1]
    two = torch.cat([one, one.flip(-1)]).numpy()
    try:
        both = sess.run(None, {'input': two})
        alone = [sess.run(None, {'input': x}) for x in (two[:1], two[1:])]
    except Exception:  # noqa: BLE001 - e.g. a Reshape to the traced batch
        return False
    return all(
        np.allclose(a[i], b[0], rtol=1e-3,
                    atol=1e-3 * float(np.abs(b).max() + 1e-12))
        for i, outs in enumerate(alone) for a, b in zip(both, outs))


def export_onnx(model: nn.Module, path: str, inputs: torch.Tensor,
                form: str = 'runtime', opset: int = MIN_OPSET,
                logger: Optional[Callable[[str], None]] = None) -> Dict:
    """Export ``model`` (a GPLQ wrapper) to ``path``.

    Args:
        model: :class:`~gplq_mm.models.GPLQModel`; what is exported is its
            :meth:`~gplq_mm.models.GPLQModel.deploy_graph` (a classifier's
            logits, a detector's backbone features).
        path: The ``.onnx`` file.
        inputs: An example input batch (preprocessed); the other axes stay
            as given. The batch axis is dynamic when onnxruntime then
            computes each image of a batch as alone (checked); else the
            batch size is ``len(inputs)`` (mmpretrain's Swin).
        form: ``'runtime'`` (W4A4; see the module doc) or ``'fp32'``.
        opset: ONNX opset, >= 21.

    Returns:
        dict: ``path``, ``bytes``, ``outputs`` (names), ``per_channel``
        (quantized layers whose input keeps per-channel steps),
        ``dynamic_batch``.

    Raises:
        ValueError: ``opset < 21``, an unknown ``form``, a float or Stage-1
            model, a quantizer with no export rule.
    """
    check_opset(opset)
    if form not in FORMS:
        raise ValueError(f'form={form!r}: use one of {FORMS}')
    per_channel = [] if form == 'fp32' else check_exportable(model)
    graph, name = model.deploy_graph()
    was_training = model.training
    model.eval()
    try:
        with _float(model, form == 'fp32'):
            with torch.no_grad():
                out = graph(inputs)
            outputs = [name] if isinstance(out, torch.Tensor) else [
                f'{name}{i}' for i in range(len(out))]
            dynamic = _trace(graph, inputs, path, outputs, opset,
                             dynamic=True)
            if not dynamic:
                _trace(graph, inputs, path, outputs, opset, dynamic=False)
    finally:
        model.train(was_training)
    if logger:
        logger(f'exported {form} ONNX (opset {opset}) to {path} '
               f'({osp.getsize(path) / 2**20:.2f} MiB), batch size '
               + ('dynamic' if dynamic else
                  f'{len(inputs)} (the host\'s forward turns the batch size '
                  'into a constant when traced)'))
        if per_channel:
            logger(f'{len(per_channel)} quantized layers keep per-channel '
                   'input steps (paper-faithful GPLQ): exported as '
                   'exact-semantics QDQ that onnxruntime runs in float; '
                   'quant_cfg.deployable=True gives integer kernels')
    return dict(path=path, bytes=osp.getsize(path), outputs=outputs,
                per_channel=per_channel, dynamic_batch=dynamic)


def _weight_codes(proto) -> List[str]:
    """Names of the int8 weight-code initializers whose every reader takes
    INT4 too (DequantizeLinear, Cast; ConvInteger does not)."""
    readers = {}
    for n in proto.graph.node:
        for i in n.input:
            readers.setdefault(i, set()).add(n.op_type)
    return sorted(t.name for t in proto.graph.initializer
                  if t.data_type == 3 and len(t.dims) > 1
                  and readers.get(t.name, {''}) <= {'DequantizeLinear', 'Cast'})


def to_storage(runtime_path: str, path: str, float16: bool = False) -> Dict:
    """Write the storage form of a runtime model: the weight-code
    initializers as INT4, two codes per byte (those of a ConvInteger, which
    takes 8-bit codes only, and codes outside [-8, 7] stay int8). Lossless:
    :func:`load_storage` gives back the runtime model.

    With ``float16``, the float matrices (two or more axes longer than 1:
    classifier heads, QwT compensators, position embeddings; no quantizer
    reads them) are stored as FP16 too, each cast back to FP32 by a
    ``Cast`` node, so they come back rounded to FP16: smaller, not lossless.
    Steps, biases and norms stay FP32.

    Returns ``path``, ``bytes``, ``packed`` (INT4 tensors), ``halved``
    (FP16 tensors)."""
    onnx = _onnx()
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
    onnx = _onnx()
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
