"""The matmul-operand requantization is exact, gives the integer kernels
their pattern, and leaves alone what is not on one grid."""
import collections

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gplq_mm.deploy import INTEGER_KERNELS, kernel_ops, session
from gplq_mm.deploy.regrid import is_requantize, requantize_matmul_operands

STEPS = dict(q=0.05, k=0.07, v=0.03)


def _graph(scale_q='const', mix=False):
    """input (2, 4, 8) -> q, k, v each quantized per tensor (uint8, zero point
    128, 4-bit range), stacked as a qkv tensor, then as Swin's host code:
    index, scale q, q @ k^T, softmax, quantized (unsigned), @ v.
    ``scale_q``: 'const' (a positive constant), 'input' (a graph input, not
    constant); ``mix``: the first matmul takes half of the scaled q's
    channels and half of k's (mixed steps)."""
    nodes, inits = [], [
        numpy_helper.from_array(np.array(128, np.uint8), 'zp'),
        numpy_helper.from_array(np.array(128 - 8, np.uint8), 'lo'),
        numpy_helper.from_array(np.array(128 + 7, np.uint8), 'hi'),
        numpy_helper.from_array(np.array([0], np.int64), 'axis0'),
        numpy_helper.from_array(np.array(0.35, np.float32), 'c'),
        numpy_helper.from_array(np.array(1 / 15, np.float32), 's_p'),
        numpy_helper.from_array(np.array(0, np.uint8), 'zp_p')]
    for name, s in STEPS.items():
        inits.append(numpy_helper.from_array(np.array(s, np.float32),
                                             f's_{name}'))
        nodes += [
            helper.make_node('QuantizeLinear', ['input', f's_{name}', 'zp'],
                             [f'{name}_q'], name=f'{name}/QuantizeLinear'),
            helper.make_node('Clip', [f'{name}_q', 'lo', 'hi'],
                             [f'{name}_c']),
            helper.make_node('DequantizeLinear', [f'{name}_c', f's_{name}',
                                                  'zp'], [f'{name}_dq']),
            helper.make_node('Unsqueeze', [f'{name}_dq', 'axis0'],
                             [f'{name}_u'])]
    nodes.append(helper.make_node('Concat', ['q_u', 'k_u', 'v_u'], ['qkv'],
                                  axis=0))
    for i, name in enumerate(STEPS):
        inits.append(numpy_helper.from_array(np.array(i, np.int64),
                                             f'i{i}'))
        nodes.append(helper.make_node('Gather', ['qkv', f'i{i}'],
                                      [f'{name}_g'], axis=0))
    inputs = [helper.make_tensor_value_info('input', TensorProto.FLOAT,
                                            [2, 4, 8])]
    if scale_q == 'input':
        inputs.append(helper.make_tensor_value_info('c', TensorProto.FLOAT,
                                                    []))
        inits = [t for t in inits if t.name != 'c']
    nodes.append(helper.make_node('Mul', ['q_g', 'c'], ['q_s']))
    for k, (lo, hi) in enumerate(((0, 4), (4, 8)) if mix else ()):
        inits += [numpy_helper.from_array(np.array([v], np.int64), f'{n}{k}')
                  for n, v in (('start', lo), ('end', hi), ('ax', 2))]
        nodes.append(helper.make_node('Slice', [
            ('q_s', 'k_g')[k], f'start{k}', f'end{k}', f'ax{k}'],
            [f'half{k}']))
    nodes += [
        *[helper.make_node('Concat', ['half0', 'half1'], ['mixed'], axis=2)
          for _ in range(mix)],
        helper.make_node('Transpose', ['k_g'], ['k_t'], perm=[0, 2, 1]),
        helper.make_node('MatMul', ['mixed' if mix else 'q_s', 'k_t'],
                         ['scores'], name='attn/MatMul'),
        helper.make_node('Softmax', ['scores'], ['p'], axis=-1),
        helper.make_node('QuantizeLinear', ['p', 's_p', 'zp_p'], ['p_q'],
                         name='p/QuantizeLinear'),
        helper.make_node('DequantizeLinear', ['p_q', 's_p', 'zp_p'],
                         ['p_dq']),
        helper.make_node('MatMul', ['p_dq', 'v_g'], ['out'],
                         name='attn/MatMul_1')]
    graph = helper.make_graph(nodes, 'attn', inputs, [
        helper.make_tensor_value_info('out', TensorProto.FLOAT, [2, 4, 8]),
        helper.make_tensor_value_info('scores', TensorProto.FLOAT,
                                      [2, 4, 4])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid('',
                                                                       21)])


def _feeds(scale_q='const'):
    x = np.random.default_rng(0).normal(0, 0.2, (2, 4, 8)).astype(np.float32)
    return dict(input=x, **({'c': np.array(0.35, np.float32)}
                        if scale_q == 'input' else {}))


def test_swin_operands_are_requantized_exactly_onto_integer_kernels(
        tmp_path):
    proto = _graph()
    feeds = _feeds()
    before = session(proto).run(None, feeds)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert requantize_matmul_operands(proto, feeds) == 2
    onnx.checker.check_model(proto, full_check=True)
    added = [n for n in proto.graph.node if is_requantize(n)]
    # q @ k^T: both operands; p @ v: v (p is a DequantizeLinear already),
    # each dequantized from the codes moved as the host moves the values
    scales = {n.input[1]: float(numpy_helper.to_array(next(
        t for t in proto.graph.initializer if t.name == n.input[1])))
        for n in added if n.op_type == 'DequantizeLinear'}
    assert sorted(scales.values()) == pytest.approx(sorted(
        [STEPS['q'] * 0.35, STEPS['k'], STEPS['v']]))
    # no quantize pass added; the float q / k / v, their stack and the
    # product with the constant gone
    now = collections.Counter(n.op_type for n in proto.graph.node)
    assert now['QuantizeLinear'] == ops['QuantizeLinear']
    assert now['Mul'] == 0 and now['DequantizeLinear'] == 4, now
    after = session(proto).run(None, feeds)
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    path = str(tmp_path / 'm.onnx')
    onnx.save(proto, path)
    ops = kernel_ops(path, feeds['input'])
    assert sum(ops.get(k, 0) for k in INTEGER_KERNELS) == 2, ops
    assert not ops.get('MatMul') and not ops.get('FusedMatMul'), ops


@pytest.mark.parametrize('case', ['input', 'mix'])
def test_operands_off_one_grid_are_left_alone(case):
    """A product with a non-constant, or an operand whose elements carry
    different steps (half q, half k): nothing inserted there."""
    proto = _graph(scale_q='input' if case == 'input' else 'const',
                   mix=case == 'mix')
    feeds = _feeds('input' if case == 'input' else 'const')
    before = session(proto).run(None, feeds)
    assert requantize_matmul_operands(proto, feeds) == 1  # p @ v only
    assert not any('attn/MatMul/' in node.name for node in proto.graph.node
                   if is_requantize(node))
    for a, b in zip(before, session(proto).run(None, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
