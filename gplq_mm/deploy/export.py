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
* **storage** (``*_w{b}a{b}_int4.onnx``, :mod:`.storage`): the same graph
  with the weight codes packed as ONNX INT4 (two per byte).
* **fp32** (``*_fp32.onnx``): the same model with every quantizer and
  compensator off.

The trace runs the model's export form
(:func:`~gplq_mm.quant.prepare_export`), never a branch of its training
forwards. The exporter is torch's TorchScript one (``dynamo=False``), which
torch deprecates. Moving to the dynamo exporter (``torch.export`` then
ONNX) would take: each ``symbolic`` of :mod:`gplq_mm.quant.qdq` rewritten
as an ``onnxscript`` function registered for a custom op (the dynamo
exporter ignores autograd ``symbolic``), the batch axis declared as a
``torch.export.Dim`` (mmpretrain / mmdet Swin compute ``int(B / ...)``,
which ``torch.export`` refuses for a symbolic size instead of baking it in,
so those hosts need a fixed batch or a patch), and :func:`fold_constants`
checked against its output (it folds to initializers itself). Not done:
the TorchScript exporter writes opset 21 QDQ that onnxruntime runs
correctly here, and the tests would catch its removal.
"""
import os.path as osp
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..quant import iter_quantizers, prepare_export, set_quant_state
from ..quant.layers import is_quant_layer
from ..quant.qdq import one_step
from .regrid import requantize_matmul_operands

__all__ = ['MIN_OPSET', 'FORMS', 'export_onnx', 'export_forms', 'trace',
           'check_exportable', 'check_opset', 'fold_constants',
           'onnx_module']

MIN_OPSET = 21  # INT4 tensors, per-axis QuantizeLinear / DequantizeLinear
FORMS = ('runtime', 'fp32')
# a graph's output names: one per output, or one numbered for each
Outputs = Union[str, Sequence[str]]


def output_names(name: Outputs, out) -> List[str]:
    """The ONNX output names of a graph whose PyTorch output is ``out`` (a
    tensor or a tuple): ``name`` itself when it lists them, else ``name``,
    numbered for a tuple."""
    if not isinstance(name, str):
        return list(name)
    return [name] if isinstance(out, torch.Tensor) else [
        f'{name}{i}' for i in range(len(out))]


def onnx_module():
    """``onnx``, or an ImportError that says how to install it."""
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


def fold_constants(proto) -> int:
    """Replace each node whose inputs are all constant by initializers
    (evaluated with onnx's reference implementation), up to the 8-bit
    codes: the weight codes become int8 initializers, named
    ``<layer scope>/weight_codes``, and what reads them (DequantizeLinear,
    Cast) stays.
    Returns the number of nodes folded."""
    onnx = onnx_module()
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
        if node.op_type in ('DequantizeLinear', 'Cast'):
            i = 0
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
    # equal scalars (zero points, clip bounds written per call) under one
    # name, so that two calls of one quantizer on one tensor are the same
    # nodes, which onnxruntime merges (one QuantizeLinear after a conv)
    first = {}
    for node in keep:
        for k, i in enumerate(node.input):
            a = consts.get(i)
            if a is not None and np.ndim(a) == 0:
                node.input[k] = first.setdefault(
                    (np.asarray(a).dtype.str, np.asarray(a).tobytes()), i)
    used = {i for node in keep for i in node.input} | {
        o.name for o in g.output}
    del g.node[:]
    g.node.extend(keep)
    del g.initializer[:]
    g.initializer.extend(numpy_helper.from_array(np.asarray(v), k)
                         for k, v in consts.items() if k in used)
    return n


# What the TorchScript exporter says on every export, understood: its
# deprecation (see the module docstring), and that it was written for opsets
# below 21 (our symbolics write the opset-21 nodes themselves; the checker
# and the parity tests check the result).
_EXPORTER_NOTES = (
    'You are using the legacy TorchScript-based ONNX export',
    'The feature will be removed. Please remove usage of this function',
    'Exporting to ONNX opset version')


def _sort_warnings(caught, logger) -> None:
    """The trace's warnings: the exporter's notes dropped; the host code's
    TracerWarnings (a size of the traced input turned into a constant)
    summarized in one log line by site, since the export is at a fixed
    image size and the batch axis is checked by running it; anything else
    warned again as it was."""
    sites = {}
    for w in caught:
        text = str(w.message)
        if text.startswith(_EXPORTER_NOTES):
            continue
        if issubclass(w.category, torch.jit.TracerWarning):
            where = w.filename.split('site-packages/')[-1]
            sites.setdefault(f'{where}:{w.lineno}', text.split('.')[0])
            continue
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if sites and logger:
        logger(f'trace: the host code turned input sizes into constants at '
               f'{len(sites)} sites (e.g. {", ".join(list(sites)[:3])}): '
               'the graph takes this image size; its batch axis is checked')


def trace(graph: nn.Module, inputs: torch.Tensor, path: str,
          outputs: Optional[List[str]] = None, opset: int = MIN_OPSET,
          dynamic: bool = True,
          logger: Optional[Callable[[str], None]] = None,
          axis: str = 'batch') -> bool:
    """Trace ``graph`` (a module taking the image batch; its quantized sites
    in their export form, :func:`~gplq_mm.quant.prepare_export`) to
    ``path``, fold its constants down to the integer codes
    (:func:`fold_constants`), requantize the matmul operands that host code
    moved off the QDQ pattern (:mod:`.regrid`) and check it
    (``onnx.checker``, full check).

    With ``dynamic``, the first axis (named ``axis``: the image batch, or
    a RoI head's RoIs) is symbolic; returns whether
    onnxruntime then computes a batch of two images as each image alone (a
    host that computes ``int(x.shape[0] / ...)`` bakes the traced batch size
    in, and another batch size would run silently wrong): when it does not,
    trace again with ``dynamic=False``. The host's TracerWarnings (sizes
    turned into constants) are summarized to ``logger``, the exporter's
    notes on opsets and deprecation dropped, any other warning kept."""
    onnx = onnx_module()
    outputs = outputs or ['output']
    axes = {n: {0: axis} for n in ['input'] + outputs} if dynamic else None
    with torch.no_grad(), prepare_export(graph), warnings.catch_warnings(
            record=True) as caught:
        warnings.simplefilter('always')
        torch.onnx.export(graph, (inputs, ), path, dynamo=False,
                          opset_version=opset, input_names=['input'],
                          output_names=outputs, dynamic_axes=axes,
                          do_constant_folding=True)
    _sort_warnings(caught, logger)
    proto = onnx.load(path)
    fold_constants(proto)
    regrid = requantize_matmul_operands(
        proto, {'input': inputs.detach().cpu().numpy()})
    if regrid and logger:
        logger(f'{regrid} activation x activation matmuls (e.g. Swin\'s '
               'window attention) take their operands\' codes through the '
               'host\'s layout ops, for integer kernels')
    onnx.save(proto, path)
    onnx.checker.check_model(path, full_check=True)
    if not dynamic:
        return False
    from .session import session
    sess = session(path)
    one = inputs[:1].detach().cpu()
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
                logger: Optional[Callable[[str], None]] = None,
                graph: Optional[Tuple[nn.Module, Outputs]] = None,
                axis: str = 'batch') -> Dict:
    """Export ``model`` (a GPLQ wrapper) to ``path``.

    Args:
        model: :class:`~gplq_mm.models.GPLQModel`; what is exported is its
            :meth:`~gplq_mm.models.GPLQModel.deploy_graph` (a classifier's
            logits, a detector's trunk), or ``graph``.
        path: The ``.onnx`` file.
        inputs: An example input batch (preprocessed); the other axes stay
            as given. The batch axis is dynamic when onnxruntime then
            computes each image of a batch as alone (checked); else the
            batch size is ``len(inputs)`` (mmpretrain's Swin).
        form: ``'runtime'`` (W4A4; see the module doc) or ``'fp32'``.
        opset: ONNX opset, >= 21.
        graph: ``(module, output names)`` of ``model.student`` to export
            instead (a detector's RoI heads, :mod:`.detector`); a single
            name is numbered when the module returns several outputs.
        axis: The name of the first, dynamic axis.

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
    graph, name = graph or model.deploy_graph()
    was_training = model.training
    model.eval()
    fp32 = dict(weight=False, act=False, qwt=False) if form == 'fp32' \
        else {}
    try:
        with set_quant_state(model.student, **fp32):
            with torch.no_grad():
                out = graph(inputs)
            outputs = output_names(name, out)
            dynamic = trace(graph, inputs, path, outputs, opset,
                            dynamic=True, logger=logger, axis=axis)
            if not dynamic:
                trace(graph, inputs, path, outputs, opset, dynamic=False)
    finally:
        model.train(was_training)
    if logger:
        logger(f'exported {form} ONNX (opset {opset}) to {path} '
               f'({osp.getsize(path) / 2**20:.2f} MiB), {axis} axis '
               + ('dynamic' if dynamic else
                  f'{len(inputs)} (the host\'s forward turns the {axis} '
                  'size into a constant when traced)'))
        if per_channel:
            logger(f'{len(per_channel)} quantized layers keep per-channel '
                   'input steps (paper-faithful GPLQ): exported as '
                   'exact-semantics QDQ that onnxruntime runs in float; '
                   'quant_cfg.deployable=True gives integer kernels')
    return dict(path=path, bytes=osp.getsize(path), outputs=outputs,
                per_channel=per_channel, dynamic_batch=dynamic)


def export_forms(model: nn.Module, out_dir: str, stem: str,
                 inputs: torch.Tensor, opset: int = MIN_OPSET,
                 logger: Optional[Callable[[str], None]] = None,
                 graph: Optional[Tuple[nn.Module, Outputs]] = None,
                 axis: str = 'batch') -> Dict:
    """Export the FP32, runtime and storage forms of ``model`` (or of
    ``graph``, see :func:`export_onnx`) to ``out_dir`` as
    ``<stem>_fp32.onnx``, ``<stem>.onnx`` and ``<stem>_int4.onnx``; returns
    their ``paths`` and ``bytes``, and the runtime export's ``outputs``,
    ``per_channel`` and ``dynamic_batch``."""
    from .storage import to_storage
    paths = dict(runtime=osp.join(out_dir, f'{stem}.onnx'),
                 storage=osp.join(out_dir, f'{stem}_int4.onnx'),
                 fp32=osp.join(out_dir, f'{stem}_fp32.onnx'))
    info = export_onnx(model, paths['runtime'], inputs, opset=opset,
                       logger=logger, graph=graph, axis=axis)
    export_onnx(model, paths['fp32'], inputs, form='fp32', opset=opset,
                logger=logger, graph=graph, axis=axis)
    store = to_storage(paths['runtime'], paths['storage'])
    if logger:
        logger(f'storage model (INT4 weights, {store["packed"]} tensors '
               f'packed): {paths["storage"]}')
    return dict(paths=paths,
                bytes={k: osp.getsize(p) for k, p in paths.items()},
                outputs=info['outputs'], per_channel=info['per_channel'],
                dynamic_batch=info['dynamic_batch'])
