"""CPU sessions of exported models, in onnxruntime or OpenVINO: opening
one, the kernels it ran, running any batch size through a fixed-batch
graph, latency."""
import collections
import json
import os
import statistics
import time
from typing import Dict, Optional

import numpy as np

__all__ = ['INTEGER_KERNELS', 'FLOAT_KERNELS', 'RUNTIMES', 'session',
           'node_threads', 'kernel_nodes', 'kernel_ops', 'openvino_kernels',
           'OpenVINOSession', 'clip_before_quantize', 'signed_codes',
           'bias_into_matmul',
           'run_batched', 'latency']

# the runtimes an exported file runs in: onnxruntime, OpenVINO in its
# default precision (bf16 float layers on a CPU with AMX or AVX-512 BF16)
# and OpenVINO in f32
RUNTIMES = ('onnxruntime', 'openvino', 'openvino-f32')

# onnxruntime kernels that multiply integer codes.
INTEGER_KERNELS = ('MatMulIntegerToFloat', 'QLinearMatMul', 'MatMulInteger',
                   'ConvInteger', 'QLinearConv', 'DynamicQuantizeMatMul')
# onnxruntime kernels that multiply float operands
FLOAT_KERNELS = ('MatMul', 'Gemm', 'FusedMatMul', 'FusedGemm', 'Conv',
                 'FusedConv', 'ConvTranspose', 'NhwcFusedConv')


def session(model, threads: Optional[int] = 2, profile: bool = False,
            runtime: str = 'onnxruntime'):
    """A CPU session of ``model`` (a path or an ``onnx.ModelProto``) with
    ``threads`` intra-op threads (None: all), in ``runtime`` (one of
    :data:`RUNTIMES`; OpenVINO: :class:`OpenVINOSession`). onnxruntime
    runs the graph as :func:`bias_into_matmul` writes it."""
    if runtime in ('openvino', 'openvino-f32'):
        if profile:
            raise ValueError('profile=True is onnxruntime\'s: use '
                             'openvino_kernels for OpenVINO')
        return OpenVINOSession(model, threads, 'f32' if runtime.endswith(
            'f32') else None)
    if runtime != 'onnxruntime':
        raise ValueError(f'runtime={runtime!r}: use one of {RUNTIMES}')
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.enable_profiling = profile
    if profile:
        opts.profile_file_prefix = os.path.join(
            os.environ.get('TMPDIR', '/tmp'), f'gplq_ort_{os.getpid()}')
    return ort.InferenceSession(
        bias_into_matmul(_own_proto(model)).SerializeToString(), opts,
        providers=['CPUExecutionProvider'])


def _own_proto(model):
    """``model`` (a path or an ``onnx.ModelProto``) as a proto a session
    may rewrite: loaded, or a copy (the caller's stays as it is)."""
    if isinstance(model, (str, os.PathLike)):
        import onnx
        return onnx.load(os.fspath(model))
    return type(model).FromString(model.SerializeToString())


class _Input:
    """What :func:`run_batched` reads of a session's input: its shape, a
    string for a dynamic axis (as onnxruntime gives it)."""

    def __init__(self, name: str, shape: list):
        self.name, self.shape = name, shape


# ops that only move or drop a tensor's elements (any element type)
_LAYOUT_OPS = ('Transpose', 'Reshape', 'Flatten', 'Squeeze', 'Unsqueeze',
               'Slice')


def _constants(g) -> dict:
    """``{name: TensorProto}`` of a graph's initializers and ``Constant``
    nodes."""
    consts = {t.name: t for t in g.initializer}
    consts.update({n.output[0]: n.attribute[0].t for n in g.node
                   if n.op_type == 'Constant' and n.attribute
                   and n.attribute[0].name == 'value'})
    return consts


def _consumers(g) -> dict:
    """``{tensor name: [nodes reading it]}`` of a graph."""
    consumers = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    return consumers


def bias_into_matmul(proto):
    """``proto`` (an exported ``onnx.ModelProto``, changed in place and
    returned) with each quantized Linear's ``MatMul(DequantizeLinear(
    codes), DequantizeLinear(weight codes)) -> Add(bias)`` written as one
    onnxruntime ``MatMulIntegerToFloat`` (its com.microsoft contrib op)
    with the bias as its last input: the form onnxruntime runs fastest.
    Its QDQ rule turns the pair into the same kernel without the bias and
    runs the Add as one more pass over the output (Swin-T batch 16: +47 ms
    of 483, profiled); the kernel adds the bias as it writes the output.
    The same integer product, scales and bias, so the same outputs (equal
    bit for bit on the Swin-T and detector benchmark files). Only a
    per-tensor activation step and a constant 2-D weight with one step per
    tensor or per output column qualify (the kernel's operands), and a
    bias of one row; the exported file keeps standard ONNX, which OpenVINO
    reads as it is."""
    from onnx import TensorProto, helper, numpy_helper, shape_inference
    g = proto.graph
    consts = _constants(g)
    consumers = _consumers(g)
    producer = {o: n for n in g.node for o in n.output}
    outputs = {o.name for o in g.output}
    inferred = shape_inference.infer_shapes(proto).graph
    infos = [*inferred.value_info, *inferred.input]
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in infos
            if v.type.tensor_type.HasField('shape')}
    dtype = {v.name: v.type.tensor_type.elem_type for v in infos}
    dtype.update({k: t.data_type for k, t in consts.items()})

    def size(name):
        return numpy_helper.to_array(consts[name]).size \
            if name in consts else None

    def dequantize(name, weight):
        """``(codes, step, zero point or '', layout ops)`` of the
        DequantizeLinear producing ``name``, where it is an operand of the
        kernel; an activation's may pass through ops that only move
        elements (a 1 x 1 conv's pixels as rows), each read by the next
        alone (and by ``Shape``)."""
        def moves(node):
            if node is None or node.op_type not in _LAYOUT_OPS or \
                    node.output[0] in outputs:
                return False
            readers = consumers[node.output[0]]
            return sum(c.op_type != 'Shape' for c in readers) == 1

        layout, dq = [], producer.get(name)
        while not weight and moves(dq):
            layout.append(dq)
            dq = producer.get(dq.input[0])
        if dq is None or dq.op_type != 'DequantizeLinear' or any(
                a.name == 'block_size' and a.i for a in dq.attribute):
            return None
        codes, step, zero = (list(dq.input) + [''])[:3]
        if dtype.get(codes) not in (TensorProto.INT8, TensorProto.UINT8) or (
                weight and (codes not in consts
                            or len(consts[codes].dims) != 2)):
            return None  # (INT4 codes: a storage model, dequantized)
        steps = (1, consts[codes].dims[1]) if weight else (1, )
        axis = next((a.i for a in dq.attribute if a.name == 'axis'), 1)
        if size(step) not in steps or (size(step) > 1 and axis not in (
                1, -1)) or (zero and size(zero) != size(step)):
            return None
        return codes, step, zero, layout

    fused, dropped = {}, set()  # MatMul -> its kernel; Adds
    for n in g.node:
        if n.op_type != 'MatMul' or n.output[0] in outputs:
            continue
        after = consumers[n.output[0]]
        if len(after) != 1 or after[0].op_type != 'Add':
            continue
        add = after[0]
        bias = add.input[1] if add.input[0] == n.output[0] else add.input[0]
        a, w = dequantize(n.input[0], False), dequantize(n.input[1], True)
        if a is None or w is None or bias not in consts:
            continue
        # a bias of one row (the export's has the output's rank, below
        # which it would broadcast the output to more axes)
        cols, dims = consts[w[0]].dims[1], list(consts[bias].dims)
        if cols < 2 or dims[-1:] != [cols] or any(d != 1 for d in dims[:-1]) \
                or len(dims) > rank.get(n.output[0], 1):
            continue
        codes, layout = a[0], a[3]
        # sizes read of the float tensors are the codes' (a Shape of the
        # DequantizeLinear would keep it computed)
        for c in consumers[layout[-1].input[0] if layout else n.input[0]]:
            if c.op_type == 'Shape':
                c.input[0] = codes
        if layout:  # the layout ops move the codes instead
            layout[-1].input[0] = codes
            codes = n.input[0]
        fused[id(n)] = helper.make_node(
            'MatMulIntegerToFloat', [codes, w[0], a[1], w[1], a[2], w[2],
                                     bias],
            [add.output[0]], name=n.name, domain='com.microsoft')
        dropped.add(id(add))
    if not fused:
        return proto
    nodes = [fused.get(id(n), n) for n in g.node if id(n) not in dropped]
    # the DequantizeLinear nodes nothing reads any more
    read = {i for n in nodes for i in n.input} | outputs
    nodes = [n for n in nodes if n.op_type != 'DequantizeLinear'
             or n.output[0] in read]
    del g.node[:]
    g.node.extend(nodes)
    if not any(o.domain == 'com.microsoft' for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid('com.microsoft', 1))
    return proto


def clip_before_quantize(proto):
    """``proto`` (an exported ``onnx.ModelProto``, changed in place and
    returned) with each ``QuantizeLinear -> Clip -> DequantizeLinear`` of a
    one-step quantizer rewritten as ``Clip -> QuantizeLinear ->
    DequantizeLinear``: the b-bit range clipped on the float input
    (``(code - zero point) * step``) in place of the codes (a stacked one,
    a step per slice: ``Max`` / ``Min`` of per-slice bounds). The same codes
    (up to the float rounding of a bound); the form OpenVINO runs fastest:
    it reads the clipped pair as one FakeQuantize feeding an int8 kernel,
    where a Clip between the two splits it into a FakeQuantize, a Convert to
    int8, a Clamp, a Convert back and the dequantizing Multiply (measured on
    DeiT-S W4A4, batch 16, 2 threads: 0.88x of OpenVINO's bf16 FP32 graph,
    against 1.95x unrewritten; docs/deploy.md). onnxruntime keeps the
    exported form, which it fuses into QLinearConv (and runs
    :func:`bias_into_matmul`'s)."""
    from onnx import helper, numpy_helper
    g = proto.graph
    consts = _constants(g)
    consumers = _consumers(g)
    outputs = {o.name for o in g.output}

    def value(name):
        return numpy_helper.to_array(consts[name]).astype(np.float64) \
            if name in consts else None

    moved, dropped = {}, set()  # QuantizeLinear -> its nodes; Clips
    for n in g.node:
        after = consumers[n.output[0]] if n.op_type == 'QuantizeLinear' \
            else []
        if (len(after) != 1 or after[0].op_type != 'Clip'
                or len(n.input) < 3 or n.output[0] in outputs):
            continue
        clip = after[0]
        step, zero, lo, hi = (value(i) for i in (*n.input[1:3],
                                                 *clip.input[1:3]))
        axis = next((a.i for a in n.attribute if a.name == 'axis'), 1)
        if any(v is None for v in (step, zero, lo, hi)) or (
                step.size > 1 and axis >= 0):
            continue  # (a stacked quantizer's axis counts from the end)
        # a step per slice along the axis (q, k, v): Min / Max of bounds
        # broadcast along it (Clip takes scalars only)
        shape = () if step.size == 1 else (-1, ) + (1, ) * (-axis - 1)
        bounds = [f'{n.name}/clip_{k}' for k in ('lo', 'hi')]
        for name, v in zip(bounds, (lo, hi)):
            g.initializer.append(numpy_helper.from_array(
                ((v - zero) * step).astype(np.float32).reshape(shape), name))
        clipped = f'{n.name}/clipped'
        clamp = [helper.make_node('Clip', [n.input[0], *bounds], [clipped],
                                  name=clip.name)] if step.size == 1 else [
            helper.make_node('Max', [n.input[0], bounds[0]],
                             [f'{clipped}_lo'], name=f'{clip.name}_lo'),
            helper.make_node('Min', [f'{clipped}_lo', bounds[1]], [clipped],
                             name=clip.name)]
        moved[id(n)] = clamp + [
            helper.make_node('QuantizeLinear', [clipped, *n.input[1:]],
                             [clip.output[0]], name=n.name, **{
                                 a.name: helper.get_attribute_value(a)
                                 for a in n.attribute})]
        dropped.add(id(clip))
    nodes = [m for n in g.node if id(n) not in dropped
             for m in moved.get(id(n), [n])]
    del g.node[:]
    g.node.extend(nodes)
    return proto


def signed_codes(proto):
    """``proto`` (an exported ``onnx.ModelProto``, changed in place and
    returned) with each activation quantizer whose codes are uint8 with
    zero point 128 (a signed grid, as onnxruntime's u8 x s8 kernels read
    it) and read only by ``DequantizeLinear`` nodes of that zero point,
    directly or through ops that move elements (Swin's q / k / v codes on
    their way to the attention matmuls), written as int8 codes with zero
    point 0: ``code - 128`` of the same grid, the same dequantized values
    (onnxruntime's reference kernels give bit-identical outputs). The form
    OpenVINO runs fastest: with a zero point its int8 FullyConnected adds a
    compensation term, without one it runs the plain s8 x s8 kernel
    (AMX-INT8 here: one 50176 x 96 x 384 layer 13.8 -> 10.1 ms; Swin-T
    W4A4 at batch 16 1.24x -> 1.06x of OpenVINO's bf16 FP32 graph,
    docs/deploy.md). Unsigned grids (zero point 0, the softmax's) keep
    uint8; onnxruntime keeps the exported form (its x86 kernels are u8 x
    s8, and its graph optimizer fails on int8 codes read through a
    Transpose)."""
    from onnx import numpy_helper
    g = proto.graph
    consts = _constants(g)
    consumers = _consumers(g)
    outputs = {o.name for o in g.output}

    def signed(node) -> bool:  # a uint8 zero point of 128
        name = node.input[2] if len(node.input) > 2 else ''
        z = numpy_helper.to_array(consts[name]) if name in consts else None
        return z is not None and z.dtype == np.uint8 and bool((z == 128).all())

    def readers(t) -> Optional[list]:
        """The DequantizeLinear nodes reading codes ``t``, through ops that
        move elements; None where anything else reads them."""
        found = []
        for c in consumers[t]:
            if c.op_type == 'Shape':
                continue
            if c.op_type == 'DequantizeLinear' and c.input[0] == t:
                if not signed(c):
                    return None
                found.append(c)
            elif c.op_type in _LAYOUT_OPS + ('Gather', 'Split') and (
                    t == c.input[0] and t not in c.input[1:]):
                for o in c.output:
                    more = None if o in outputs else readers(o)
                    if more is None:
                        return None
                    found += more
            else:
                return None
        return found

    names = {}  # uint8 zero point's name -> its int8 one
    for n in g.node:
        dqs = readers(n.output[0]) if (
            n.op_type == 'QuantizeLinear' and signed(n)
            and n.output[0] not in outputs) else None
        for m in (n, *dqs) if dqs else ():
            name = m.input[2]
            if name not in names:
                names[name] = f'{name}/int8'
                g.initializer.append(numpy_helper.from_array(np.zeros(
                    numpy_helper.to_array(consts[name]).shape, np.int8),
                    names[name]))
            m.input[2] = names[name]
    return proto


class OpenVINOSession:
    """An exported model compiled by OpenVINO for the CPU, with
    onnxruntime's session interface (``run(None, feeds)``, ``get_inputs``),
    so everything that runs a session runs this one too. It compiles the
    graph as :func:`clip_before_quantize` and :func:`signed_codes`
    rewrite it.

    ``precision``: None leaves OpenVINO's own choice (bf16 on a CPU with
    AMX or AVX-512 BF16, where a float graph runs in bf16); ``'f32'`` or
    ``'bf16'`` sets ``INFERENCE_PRECISION_HINT``. ``self.precision`` is
    the one it compiled with. Quantized layers (QuantizeLinear ->
    DequantizeLinear, which OpenVINO reads as FakeQuantize) run on its int8
    kernels in either."""

    def __init__(self, model, threads: Optional[int] = 2,
                 precision: Optional[str] = None):
        try:
            import openvino as ov
        except ImportError as e:
            raise ImportError('runtime openvino needs the openvino package '
                              '(requirements.txt)') from e
        if precision not in (None, 'f32', 'bf16'):
            raise ValueError(f'precision={precision!r}: use None (the '
                             "CPU's default), 'f32' or 'bf16'")
        core = ov.Core()
        net = core.read_model(signed_codes(clip_before_quantize(
            _own_proto(model))).SerializeToString())
        config = {'PERFORMANCE_HINT': 'LATENCY', 'NUM_STREAMS': 1}
        if threads:
            config['INFERENCE_NUM_THREADS'] = threads
        if precision:
            config['INFERENCE_PRECISION_HINT'] = precision
        self.compiled = core.compile_model(net, 'CPU', config)
        self.request = self.compiled.create_infer_request()
        # what it runs float layers in: 'bf16' or 'f32'
        self.precision = self.compiled.get_property(
            'INFERENCE_PRECISION_HINT').get_type_name()

    def get_inputs(self):
        out = []
        for i, port in enumerate(self.compiled.inputs):
            shape = port.get_partial_shape()
            out.append(_Input(port.get_any_name(), [
                d.get_length() if d.is_static else f'd{i}_{j}'
                for j, d in enumerate(shape)]))
        return out

    def run(self, output_names, feeds: Dict[str, np.ndarray]) -> list:
        if output_names is not None:
            raise ValueError('OpenVINOSession.run returns every output '
                             '(output_names=None)')
        res = self.request.infer(
            {k: np.ascontiguousarray(v) for k, v in feeds.items()})
        # copies: the request reuses its output buffers on the next call
        return [np.array(res[o]) for o in self.compiled.outputs]


def openvino_kernels(sess: OpenVINOSession) -> Dict[str, Dict[str, int]]:
    """``{layer type: {runtime precision: layers}}`` of the matmul / conv
    layers OpenVINO compiled (its runtime model's ``layerType`` and
    ``runtimePrecision``): ``u8`` / ``i8`` are its integer kernels."""
    counts = collections.defaultdict(collections.Counter)
    for op in sess.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = str(info['layerType'].astype(str)) if 'layerType' in info \
            else op.get_type_name()
        if kind.startswith(('FullyConnected', 'MatMul', 'Convolution',
                            'Deconvolution', 'GroupConvolution')):
            prec = str(info['runtimePrecision'].astype(str))
            counts[kind][prec] += 1
    return {k: dict(v) for k, v in counts.items()}


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
