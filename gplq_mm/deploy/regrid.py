"""Requantize an activation x activation matmul's operands where the host's
code moves them off the QDQ pattern, an exact rewrite of an exported graph.

Swin's window attention (mmpretrain's, mmdet's) takes q, k, v from the
quantized qkv output, then reshapes, permutes and indexes them and scales q
by a constant before its two matmuls: onnxruntime finds no
``DequantizeLinear`` at those matmuls' inputs and runs them in float. Every
value there is still on one integer grid: the ops between (reshapes,
transposes, gathers, slices, concatenations, a product with a positive
scalar) move the dequantized codes or scale them all alike. So where each
element of an operand comes from a ``DequantizeLinear`` (per tensor, or with
a step per slice: the stacked q / k / v) with the same zero point, and its
scale field (each element's step, times the
constants on its way) is one value, the operand is its sources' codes moved
by the same layout ops, dequantized with that scale: the rewrite replays
the layout ops on the codes (8-bit tensors, a quarter of the float bytes),
drops the products with constants (they scale the step, not the codes) and
puts one ``DequantizeLinear`` in front of the matmul, which gives the
integer kernels their pattern with no quantize pass; the float path that
only fed the operands is dropped.

The scale field is computed, not guessed: the operand's cone is replayed on
each source's steps laid out as its elements (a layout op moves the steps as
it moves the values; a product with a constant scales them) and run once in
onnxruntime on the export's example input.
"""
import collections
import copy
from typing import Dict, List, Optional

import numpy as np

__all__ = ['requantize_matmul_operands', 'is_requantize', 'REQUANTIZE']

REQUANTIZE = 'requantize'  # in the inserted nodes' names
# ops that move elements: (their data inputs; None: all of them)
_LAYOUT = {'Reshape': (0, ), 'Transpose': (0, ), 'Squeeze': (0, ),
           'Unsqueeze': (0, ), 'Gather': (0, ), 'Slice': (0, ),
           'Split': (0, ), 'Flatten': (0, ), 'Identity': (0, ),
           'Concat': None}
# what onnxruntime's QDQ propagation moves a DequantizeLinear past itself
_PROPAGATED = {'Reshape', 'Transpose', 'Squeeze', 'Unsqueeze', 'Flatten',
               'Identity'}


def is_requantize(node) -> bool:
    """Whether ``node`` was inserted by :func:`requantize_matmul_operands`
    (not a quantizer of the model)."""
    return f'/{REQUANTIZE}' in node.name


def requantize_matmul_operands(proto, feeds: Dict[str, np.ndarray]) -> int:
    """Rewrite ``proto`` (changed in place) as the module docstring says;
    ``feeds``: an input the graph runs on (its traced shapes). Returns the
    number of matmuls rewritten."""
    from onnx import helper, numpy_helper
    g = proto.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def scalar(name) -> Optional[float]:
        a = consts.get(name)
        return float(a) if a is not None and a.size == 1 else None

    def source(n):
        """A DequantizeLinear of an activation, per tensor or with one zero
        point for all its steps (the stacked q / k / v): that zero point
        (value, dtype), else None."""
        if (n.op_type != 'DequantizeLinear' or n.input[0] in consts
                or len(n.input) < 3 or n.input[1] not in consts
                or n.input[2] not in consts):
            return None
        zero = np.unique(consts[n.input[2]])
        if len(zero) != 1:
            return None
        return float(zero[0]), consts[n.input[2]].dtype

    def data_inputs(n) -> Optional[List[str]]:
        """The inputs whose elements ``n`` moves or scales; None when it is
        not such an op."""
        if n.op_type in _LAYOUT:
            keep = _LAYOUT[n.op_type]
            return list(n.input) if keep is None else [n.input[i]
                                                       for i in keep]
        if n.op_type in ('Mul', 'Div'):
            c = [scalar(i) for i in n.input]
            k = 1 if n.op_type == 'Div' else next(
                (i for i in (1, 0) if c[i] is not None), None)
            if k is not None and c[k] is not None and c[k] > 0:
                return [n.input[1 - k]]
        return None

    def cone(t, nodes, sources) -> bool:
        """Collect the nodes between ``t`` and its sources; False when some
        element of ``t`` does not come from a source."""
        n = producer.get(t)
        if n is None:
            return False
        if source(n) is not None:
            sources[n.output[0]] = n
            return True
        ins = data_inputs(n)
        if ins is None or not all(cone(i, nodes, sources) for i in ins):
            return False
        nodes[id(n)] = n
        return True

    plans = []  # (matmul, input index, cone nodes, sources)
    for mm in g.node:
        if mm.op_type != 'MatMul' or any(i in consts for i in mm.input):
            continue
        todo, ok = [], True
        for idx, t in enumerate(mm.input):
            if t in producer and source(producer[t]) is not None:
                continue  # the pattern already
            nodes, sources = {}, {}
            zeros = set()
            ok = cone(t, nodes, sources) and bool(sources)
            if ok:
                zeros = {source(s) for s in sources.values()}
                ok = len(zeros) == 1
            if not ok:
                break
            if len(sources) == 1 and all(n.op_type in _PROPAGATED
                                         for n in nodes.values()) and \
                    scalar(next(iter(sources.values())).input[1]):
                continue  # onnxruntime finds the pattern (ViT's k^T)
            todo.append((idx, nodes, sources, zeros.pop()))
        if ok:
            plans += [(mm, *p) for p in todo]
    if not plans:
        return 0

    # the scale fields, in one run of a copy of the graph
    field = copy.deepcopy(proto)
    fg = field.graph
    wanted = []
    done = set()
    order = {id(n): k for k, n in enumerate(g.node)}
    for mm, idx, nodes, sources, _ in plans:
        for out, dq in sources.items():
            if out in done:
                continue
            done.add(out)
            # each element's step: DequantizeLinear of codes one above the
            # zero point (below it at the top of the range), so that its
            # own axis rule places a step per slice
            base = f'{REQUANTIZE}/field/{out}'
            zero = consts[dq.input[2]]
            z = int(zero.reshape(-1)[0])
            one = z + 1 if z < np.iinfo(zero.dtype).max else z - 1
            fg.initializer.append(numpy_helper.from_array(
                np.array(one, zero.dtype), f'{base}/one'))
            fg.node.extend([
                helper.make_node('Shape', [out], [f'{base}/shape']),
                helper.make_node('Expand', [f'{base}/one', f'{base}/shape'],
                                 [f'{base}/codes']),
                helper.make_node('DequantizeLinear', [
                    f'{base}/codes', *dq.input[1:3]], [f'{base}/signed'],
                    name=f'{base}/dq', **{a.name: a.i for a in dq.attribute}),
                helper.make_node('Abs', [f'{base}/signed'],
                                 [f'{REQUANTIZE}/{out}'],
                                 name=f'{REQUANTIZE}/{out}')])
        for n in sorted(nodes.values(), key=lambda n: order[id(n)]):
            if n.output[0] in done:
                continue
            done.update(n.output)
            ins = set(data_inputs(n))
            clone = copy.deepcopy(n)
            clone.name = f'{REQUANTIZE}/{n.output[0]}'
            for k, i in enumerate(clone.input):
                if i in ins:
                    clone.input[k] = f'{REQUANTIZE}/{i}'
            for k, o in enumerate(clone.output):
                clone.output[k] = f'{REQUANTIZE}/{o}'
            fg.node.append(clone)
        wanted.append(f'{REQUANTIZE}/{mm.input[idx]}')
    del fg.output[:]
    fg.output.extend(helper.make_empty_tensor_value_info(w)
                     for w in dict.fromkeys(wanted))
    from .session import session
    sess = session(field)
    fields = dict(zip([o.name for o in sess.get_outputs()],
                      sess.run(None, feeds)))

    steps = {}  # (matmul id, input index) -> the operand's one step
    for mm, idx, *_ in plans:
        f = fields[f'{REQUANTIZE}/{mm.input[idx]}']
        if f.size and f.min() == f.max() and f.min() > 0:
            steps[id(mm), idx] = np.float32(f.reshape(-1)[0])
    # each operand's cone replayed on its sources' codes (a product with a
    # constant scales the step, not the codes), dequantized at the matmul
    # (a source's codes are written before anything reads the source)
    source_codes = {out: dq.input[0] for *_, sources, _ in plans
                    for out, dq in sources.items()}
    codes_of = dict(source_codes)  # float tensor -> its codes

    def codes(t, new) -> str:
        if t not in codes_of:
            n = producer[t]
            ins = data_inputs(n)
            if n.op_type in ('Mul', 'Div'):
                codes_of[t] = codes(ins[0], new)
                return codes_of[t]
            clone = copy.deepcopy(n)
            clone.name = f'{REQUANTIZE}/codes/{n.name or n.output[0]}'
            for k, i in enumerate(clone.input):
                if i in ins:
                    clone.input[k] = codes(i, new)
            for k, o in enumerate(n.output):
                clone.output[k] = codes_of[o] = f'{REQUANTIZE}/codes/{o}'
            new.append(clone)
        return codes_of[t]

    inserted = collections.defaultdict(list)  # matmul id -> new nodes
    replaced = set()  # the float cones' nodes, and their sources
    for mm, idx, nodes, sources, (zero, dtype) in plans:
        # a matmul with an operand of mixed steps stays float
        if not all((id(m), i) in steps for m, i, *_ in plans if m is mm):
            continue
        base = f'{mm.name}/{REQUANTIZE}{idx}'
        scale, zp = f'{base}/scale', f'{base}/zero_point'
        g.initializer.extend([
            numpy_helper.from_array(np.array(steps[id(mm), idx]), scale),
            numpy_helper.from_array(np.array(zero, dtype), zp)])
        new = inserted[id(mm)]
        value = f'{base}/value'
        new.append(helper.make_node(
            'DequantizeLinear', [codes(mm.input[idx], new), scale, zp],
            [value], name=f'{base}/DequantizeLinear'))
        replaced.update(id(n) for n in (*nodes.values(), *sources.values()))
        mm.input[idx] = value
    nodes = [m for n in g.node for m in inserted.get(id(n), []) + [n]]
    for n in nodes:  # a shape read off a source: off its codes
        if n.op_type == 'Shape' and n.input[0] in source_codes:
            n.input[0] = source_codes[n.input[0]]
    # drop what only the float operands read
    outputs = {o.name for o in g.output}
    while True:
        read = {i for n in nodes for i in n.input} | outputs
        dead = {id(n) for n in nodes if id(n) in replaced
                and not any(o in read for o in n.output)}
        if not dead:
            break
        nodes = [n for n in nodes if id(n) not in dead]
    del g.node[:]
    g.node.extend(nodes)
    return len(inserted)
