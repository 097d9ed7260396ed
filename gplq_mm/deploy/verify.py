"""Does the exported model compute what the PyTorch model computes, and on
which kernels? Output parity, per-quantizer integer-code agreement, the
kernel audit, and the three together per graph (:func:`check_graph`)."""
import collections
from typing import Dict, List

import numpy as np
import torch

from ..quant import composed_paths, iter_quantizers
from ..quant.functional import codes, patchify
from ..quant.qdq import export_step
from .regrid import is_requantize
from .session import run_batched, session

__all__ = ['parity', 'code_agreement', 'kernel_audit', 'check_graph',
           'openvino_available',
           'QUANTIZED_ON_FLOAT', 'NOT_REQUANTIZED']


@torch.no_grad()
def parity(model, sess, batches, graph=None) -> Dict[str, float]:
    """Compare ``model``'s :meth:`deploy_graph` (PyTorch; or ``graph``, a
    module of ``model.student``) with ``sess`` on ``batches`` (its input
    tensors: preprocessed images, RoI features): per output, the largest
    absolute difference and the relative L2 error; for one 2-D output (a
    classifier's logits), also the share of images whose argmax agrees."""
    graph = graph or model.deploy_graph()[0]
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
        if len(ref) == 1 and ref[0].dim() == 2:  # logits
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
    codes (after it) of every QuantizeLinear also graph outputs, in graph
    (= call) order, and per quantizer call: the index of its input / codes
    pair among those outputs, its zero point, and for the slices of a
    stacked QuantizeLinear (its codes clipped as one step's, a step per
    slice along ``axis``: q, k, v) ``(axis, slice)``, else None."""
    import onnx
    from onnx import numpy_helper
    proto = onnx.load(path)
    consts = {t.name: numpy_helper.to_array(t)
              for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    consumers = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    names, calls = [], []
    for n in proto.graph.node:
        if n.op_type != 'QuantizeLinear' or is_requantize(n):
            continue
        x = n.input[0]
        while x in producer and producer[x].op_type in ('Clip', 'Min', 'Max'):
            x = producer[x].input[0]
        codes = n.output[0]
        clips = [c for c in consumers.get(codes, ()) if c.op_type == 'Clip']
        if clips:  # one step: the b-bit range clipped on the codes
            codes = clips[0].output[0]
        # one zero point per node (per-channel ones are all 0)
        zero = float(consts[n.input[2]].reshape(-1)[0])
        steps = consts[n.input[1]].size
        axis = next((a.i for a in n.attribute if a.name == 'axis'), 1)
        calls += [(len(names) // 2, zero, (axis, i) if clips and steps > 1
                   else None) for i in range(steps if clips else 1)]
        names += [x, codes]
    proto.graph.output.extend(
        onnx.helper.make_empty_tensor_value_info(n) for n in names)
    return proto, calls


def _codes(q, x: torch.Tensor) -> np.ndarray:
    """``q``'s integer codes of ``x`` (one step: any layout, e.g. a 1 x 1
    conv's input exported as patches)."""
    step = export_step(q.step).to(x.dtype)
    return codes(x, step, q.qmin, q.qmax,
                 q.axis if step.dim() else None).numpy()


def _as_patches(c: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A patch embedding's (B, C, H, W) input codes in the exported layout
    ``like`` (B, patches, C * k * k), square patches."""
    k = int(round((like.shape[-1] / c.shape[1])**.5))
    return patchify(torch.from_numpy(c), (k, k)).numpy().reshape(like.shape)


@torch.no_grad()
def code_agreement(model, path: str, batches,
                   graph=None) -> Dict[str, list]:
    """Per activation quantizer, in call order: the share of elements whose
    integer code onnxruntime computes equal to PyTorch's,

    * ``same_input``: PyTorch's quantizer applied to onnxruntime's own input
      of that quantizer (the export's numerics alone);
    * ``end_to_end``: the PyTorch model's codes, where a code flipped by a
      float-rounding difference upstream changes the inputs downstream.

    ``model`` is the exported GPLQ model, ``path`` its runtime ONNX file
    (of :meth:`deploy_graph`, or of ``graph``, a module of
    ``model.student``), ``batches`` the graph's input tensors."""
    proto, nodes = _with_codes(path)
    sess = session(proto, threads=None)
    graph = graph or model.deploy_graph()[0]
    model.eval()
    counts = np.zeros((3, len(nodes)))  # same input, end to end, elements
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
        n_out = len(got) - 2 * (nodes[-1][0] + 1 if nodes else 0)
        if len(calls) != len(nodes):
            raise RuntimeError(f'the QuantizeLinear nodes stand for '
                               f'{len(nodes)} quantizer calls, PyTorch made '
                               f'{len(calls)}')
        for i, ((k, z, part), (q, ref)) in enumerate(zip(nodes, calls)):
            x_in = got[n_out + 2 * k]
            ort = got[n_out + 2 * k + 1].astype(np.float32) - z
            if part is not None:  # one slice of a stacked QuantizeLinear
                x_in, ort = (np.take(a, part[1], axis=part[0])
                             for a in (x_in, ort))
            if ref.ndim == 4 and ort.ndim == 3:  # patch embedding
                ref = _as_patches(ref, ort)
            elif ref.ndim == 4 and ref.shape != ort.shape:  # pixels, NHWC
                ref = ref.transpose(0, 2, 3, 1)  # (a transposed conv)
            counts[0, i] += (ort == _codes(q, torch.from_numpy(x_in))).sum()
            counts[1, i] += (ort == ref).sum()
            counts[2, i] += ort.size
    return dict(same_input=list(counts[0] / counts[2]),
                end_to_end=list(counts[1] / counts[2]))


def _module_of(node: str, modules: Dict) -> str:
    """The module of an exported node, from its scoped name
    (``/backbone/stages.0/.../MatMul_3``; fused nodes keep a name they
    replaced): the longest scope prefix that names a module."""
    parts = [p for p in node.split('/') if p]
    for i in range(len(parts) - 1, 0, -1):
        head, last = parts[:i - 1], parts[i - 1]
        # a module called again is scoped 'name_1'
        for name in ('.'.join(head + [last]),
                     '.'.join(head + [last.rsplit('_', 1)[0]])):
            if name in modules:
                return name
    return ''


def _why_float(mod) -> str:
    """Why a float matmul / conv kernel runs for module ``mod``; the text of
    :data:`QUANTIZED_ON_FLOAT` for a layer that should not."""
    import torch.nn as nn

    from ..quant.layers import is_quant_layer
    from ..quant.qdq import one_step
    if is_quant_layer(mod):
        q = mod.input_quantizer
        if not mod.weight_quantizer.enabled:
            return 'weights not quantized'
        if not q.enabled:
            return 'input not quantized'
        if not one_step(q.step):
            return 'per-channel input steps (paper-faithful mode)'
        return QUANTIZED_ON_FLOAT
    if isinstance(mod, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        return f'not quantized ({type(mod).__name__})'
    return f'activation x activation in {type(mod).__name__} (no weights)'


QUANTIZED_ON_FLOAT = 'a quantized layer on a float kernel'


NOT_REQUANTIZED = ('output not requantized (QLinearConv needs one '
                   'QuantizeLinear after the conv; ConvInteger runs ~10x '
                   'slower than the float Conv of the same values)')


def _requantized(proto) -> Dict[str, bool]:
    """``{Conv node name: whether its output (through a Relu) goes to one
    quantizer's QuantizeLinear and nothing else}`` of an exported graph:
    where onnxruntime can run it as QLinearConv."""
    consumers = collections.defaultdict(list)
    for n in proto.graph.node:
        for i in n.input:
            consumers[i].append(n)
    out = {}
    for n in proto.graph.node:
        if n.op_type == 'Conv':
            after = consumers[n.output[0]]
            if len(after) == 1 and after[0].op_type == 'Relu':
                after = consumers[after[0].output[0]]
            # one QuantizeLinear, or several of the same inputs (one
            # quantizer read by two layers), which onnxruntime merges
            out[n.name] = bool(after) and all(
                a.op_type == 'QuantizeLinear'
                and list(a.input) == list(after[0].input) for a in after)
    return out


def kernel_audit(model, path: str, inputs: torch.Tensor,
                 graph=None) -> Dict:
    """The kernels onnxruntime runs for the exported graph at ``path`` (of
    ``model``'s :meth:`deploy_graph`, or of ``graph``) on ``inputs``:
    ``integer`` and ``float`` (matmul / conv kernels) counts, ``ops``
    (every op type), and ``float_nodes``: each float matmul / conv kernel
    by node name with the module it computes and why it is float
    (:data:`QUANTIZED_ON_FLOAT` marks a defect; :data:`NOT_REQUANTIZED` a
    conv that onnxruntime has no fast integer kernel for)."""
    from .session import FLOAT_KERNELS, INTEGER_KERNELS, kernel_nodes
    graph = graph or model.deploy_graph()[0]
    modules = dict(graph.named_modules())
    import onnx
    nodes = kernel_nodes(path, inputs.detach().float().numpy())
    requantized = _requantized(onnx.load(path))
    floats = []
    for name, op in sorted(nodes.items()):
        if op in FLOAT_KERNELS:
            mod = _module_of(name, modules)
            why = _why_float(modules[mod])
            if any(p.split('_')[0] == 'qwt' for p in name.split('/')):
                # a compensator runs in its block's forward hook, which the
                # exporter scopes under the block's parent
                why = 'QwT compensator (FP32 by design)'
            elif why == QUANTIZED_ON_FLOAT and not requantized.get(
                    name, True):
                why = NOT_REQUANTIZED
            floats.append(dict(node=name, op=op, module=mod, why=why))
    return dict(
        integer=sum(op in INTEGER_KERNELS for op in nodes.values()),
        float=len(floats), ops=dict(collections.Counter(nodes.values())),
        float_nodes=floats)


def openvino_available() -> bool:
    """Whether the openvino package imports here."""
    import importlib.util
    return importlib.util.find_spec('openvino') is not None


def check_graph(model, paths: Dict[str, str], inputs: List[torch.Tensor],
                graph=None, log=None, name: str = 'model') -> Dict:
    """``tools/export.py --check`` for one exported graph (``paths``: its
    forms' files; ``graph``: its module of ``model.student``, default
    :meth:`deploy_graph`) on ``inputs`` (its input tensors, as PyTorch
    computes them): ``parity`` of the storage file in onnxruntime with
    PyTorch, ``codes`` (:func:`code_agreement` of the runtime file) and
    ``kernels`` (:func:`kernel_audit`); where openvino is installed, also
    the storage file's parity in OpenVINO, ``parity_openvino-f32`` (f32:
    the graph's numerics) and ``parity_openvino`` (its default precision,
    bf16 float layers on AMX CPUs: what runs), and ``openvino_kernels``
    (:func:`~.session.openvino_kernels`). With
    ``log``, one line each, and each float kernel with why."""
    from .session import openvino_kernels
    from .storage import open_model
    inputs = [x for x in inputs if len(x)]  # an image without proposals
    storage = open_model(paths['storage'])
    out = dict(parity=parity(model, session(storage, threads=None), inputs,
                             graph))
    if openvino_available():  # the same file in OpenVINO: f32 checks
        for rt in ('openvino-f32', 'openvino'):  # the graph, its default
            ov = session(storage, threads=None, runtime=rt)  # is what runs
            out[f'parity_{rt}'] = dict(parity(model, ov, inputs, graph),
                                       precision=ov.precision)
        out['openvino_kernels'] = openvino_kernels(ov)
    agree = code_agreement(model, paths['runtime'], inputs, graph)
    same, e2e = agree['same_input'], agree['end_to_end']
    out['codes'] = dict(
        quantizers=len(same),
        same_input_min=float(min(same)) if same else None,
        end_to_end_min=float(min(e2e)) if e2e else None,
        end_to_end_mean=float(np.mean(e2e)) if e2e else None)
    out['kernels'] = kernel_audit(model, paths['runtime'], inputs[0], graph)
    if log:
        k = out['kernels']
        log(f'{name}: onnxruntime vs PyTorch {out["parity"]}')
        for rt in ('openvino-f32', 'openvino'):
            if f'parity_{rt}' in out:
                log(f'{name}: {rt} vs PyTorch {out[f"parity_{rt}"]}')
        if 'openvino_kernels' in out:
            log(f'{name}: OpenVINO matmul / conv layers by precision '
                f'{out["openvino_kernels"]}')
        log(f'{name}: integer codes equal to PyTorch\'s {out["codes"]}')
        log(f'{name}: {k["integer"]} integer kernels, {k["float"]} float '
            'matmul / conv kernels')
        for f in k['float_nodes']:
            log(f'{name}:   float {f["op"]} {f["node"]} ({f["module"]}): '
                f'{f["why"]}')
    return out
