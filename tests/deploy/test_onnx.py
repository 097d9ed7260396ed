"""ONNX export: onnxruntime computes what the PyTorch W4A4 model computes,
deployable models run integer kernels, the storage form round-trips, and
bad input is refused by name."""
import collections
import copy

import numpy as np
import onnx
import pytest
import torch
from mmengine.registry import MODELS, DefaultScope

import gplq_mm  # noqa: F401
from gplq_mm.deploy import (
    INTEGER_KERNELS,
    code_agreement,
    export_onnx,
    kernel_ops,
    load_storage,
    session,
    to_storage,
    trace,
)
from gplq_mm.quant.layers import is_quant_layer

_VIT = dict(arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                      feedforward_channels=64), img_size=32, patch_size=8)
HOSTS = dict(
    vit=(dict(type='VisionTransformer', **_VIT), None,
         dict(type='VisionTransformerClsHead', num_classes=10,
              in_channels=32)),
    deit=(dict(type='DistilledVisionTransformer', **_VIT), None,
          dict(type='DeiTClsHead', num_classes=10, in_channels=32)),
    swin=(dict(type='SwinTransformer', arch=dict(
        embed_dims=16, depths=[1, 1], num_heads=[2, 4]), img_size=32,
        patch_size=2, window_size=4, out_indices=(1, )),
        dict(type='GlobalAveragePooling'),
        dict(type='LinearClsHead', num_classes=10, in_channels=32)),
)


def _images(n, seed):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(
        seed))


def build(host, stage=2, **kw):
    """A tiny random 2-block GPLQ classifier, calibrated, and (stage 2)
    weight-quantized with QwT fitted."""
    backbone, neck, head = HOSTS[host]
    arch = dict(type='ImageClassifier', backbone=copy.deepcopy(backbone),
                neck=neck, head=head, data_preprocessor=dict(
                    num_classes=10, mean=[0.] * 3, std=[1.] * 3))
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(dict(type='GPLQClassifier', architecture=arch,
                                  **kw))
    batches = [dict(inputs=_images(8, seed)) for seed in range(4)]
    if stage >= 1:
        model.calibrate(batches[:2])
    if stage >= 2:
        model.weight_ptq(batches)
    model.eval()
    return model


@pytest.mark.parametrize('host,deployable', [
    ('vit', True), ('deit', True), ('swin', True), ('vit', False),
    ('swin', False)])
def test_onnxruntime_computes_the_pytorch_model(host, deployable, tmp_path):
    """Per quantizer: on the same input, onnxruntime's codes are the
    PyTorch quantizer's (>= 99.99%: rounding ties); through the whole model
    (where a code flipped by a float-rounding difference upstream changes
    the inputs downstream) >= 99.5%; the logits agree (a flipped code moves
    one image's logits by up to ~15% on these random 4-bit models)."""
    model = build(host, quant_cfg=dict(deployable=deployable))
    x = _images(16, seed=10)
    path = str(tmp_path / 'm.onnx')
    info = export_onnx(model, path, x)
    assert bool(info['per_channel']) != deployable
    # mmpretrain's Swin computes int(windows.shape[0] / ...): traced, the
    # batch size is a constant, which the export detects.
    assert info['dynamic_batch'] == (host != 'swin')
    agree = code_agreement(model, path, [x])
    assert len(agree['same_input']) > 10
    assert min(agree['same_input']) >= 0.9999, agree
    assert min(agree['end_to_end']) >= 0.995, agree
    got = session(path).run(None, {'input': x.numpy()})
    with torch.no_grad():
        ref_logits = model.deploy_graph()[0](x).numpy()
    logits = got[0]
    assert np.linalg.norm(logits - ref_logits) < 0.1 * np.linalg.norm(
        ref_logits)
    assert (logits.argmax(1) == ref_logits.argmax(1)).mean() >= 15 / 16


def test_swin_quantizes_q_k_v_in_one_stacked_pair(tmp_path):
    """Swin's qkv output (q, k, v each with one step) exports as one
    QuantizeLinear / DequantizeLinear pair with a step per slice, no split
    and join around three pairs; the attention matmuls still find their
    integer pattern (the kernel test) and each of the three quantizer calls
    is checked on its slice (the agreement test)."""
    from gplq_mm.quant.layers import QuantQKV
    model = build('swin', quant_cfg=dict(deployable=True))
    path = str(tmp_path / 'm.onnx')
    export_onnx(model, path, _images(2, 3))
    proto = onnx.load(path)
    consts = {t.name: onnx.numpy_helper.to_array(t)
              for t in proto.graph.initializer}
    layers = [m for m in model.student.modules() if isinstance(m, QuantQKV)]
    stacked = [consts[n.input[1]] for n in proto.graph.node
               if n.op_type == 'QuantizeLinear'
               and consts[n.input[1]].size > 1]
    assert layers and len(stacked) == len(layers)
    for layer, steps in zip(layers, stacked):
        np.testing.assert_allclose(steps, [
            q.step.item() for q in layer.operand_quantizers], rtol=1e-6)
    assert not any(n.op_type == 'Split' and '/qkv/' in n.name
                   for n in proto.graph.node)


# Attention matmuls that run on integer kernels too, 2 per block: ViT /
# DeiT's from the export form of their attention, Swin's after the graph's
# q / k / v operands are requantized (gplq_mm.deploy.regrid).
ATTENTION_INT = dict(vit=4, deit=4, swin=4)


@pytest.mark.parametrize('host', ['vit', 'deit', 'swin'])
def test_deployable_model_runs_every_quantized_layer_on_integer_kernels(
        host, tmp_path):
    model = build(host, quant_cfg=dict(deployable=True))
    layers = sum(is_quant_layer(m) for m in model.student.modules())
    path = str(tmp_path / 'm.onnx')
    export_onnx(model, path, _images(2, 3))
    ops = kernel_ops(path, _images(2, 4).numpy())
    ints = sum(ops.get(k, 0) for k in INTEGER_KERNELS)
    assert ints == layers + ATTENTION_INT[host], ops
    # paper-faithful: exact semantics, float kernels
    faithful = build(host)
    export_onnx(faithful, path, _images(2, 3))
    ops = kernel_ops(path, _images(2, 4).numpy())
    assert not any(ops.get(k, 0) for k in INTEGER_KERNELS), ops


def test_storage_model_packs_int4_and_loads_back_to_the_runtime_model(
        tmp_path):
    model = build('swin', quant_cfg=dict(deployable=True))
    runtime, storage = str(tmp_path / 'm.onnx'), str(tmp_path / 'm4.onnx')
    export_onnx(model, runtime, _images(4, 3))
    info = to_storage(runtime, storage)
    assert info['packed'] > 0
    packed = [t for t in onnx.load(storage).graph.initializer
              if t.data_type == onnx.TensorProto.INT4]
    assert len(packed) == info['packed']
    for t in packed:  # two codes per byte
        assert len(t.raw_data) == (int(np.prod(t.dims)) + 1) // 2
    loaded = {t.name: onnx.numpy_helper.to_array(t)
              for t in load_storage(storage).graph.initializer}
    for t in onnx.load(runtime).graph.initializer:
        a = onnx.numpy_helper.to_array(t)
        assert a.dtype == loaded[t.name].dtype
        assert np.array_equal(a, loaded[t.name]), t.name
    x = _images(4, 5).numpy()
    assert np.array_equal(session(runtime).run(None, {'input': x})[0],
                          session(load_storage(storage)).run(
                              None, {'input': x})[0])


def test_fp32_export_is_the_float_model(tmp_path):
    model = build('deit', quant_cfg=dict(deployable=True))
    path = str(tmp_path / 'fp32.onnx')
    export_onnx(model, path, _images(1, 3), form='fp32')
    proto = onnx.load(path)
    assert not any(n.op_type in ('QuantizeLinear', 'DequantizeLinear')
                   for n in proto.graph.node)
    assert model.stage == 2  # the model is left as it was
    x = _images(4, 6)
    model.use_qwt = False
    model.set_stage(0)  # quantizers and compensators off
    with torch.no_grad():
        ref = model.deploy_graph()[0](x).numpy()
    got = session(path).run(None, {'input': x.numpy()})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('stage,match', [(0, 'float checkpoint'),
                                         (1, 'Stage-1 checkpoint')])
def test_float_and_stage1_models_are_refused(stage, match, tmp_path):
    model = build('vit', stage=stage)
    with pytest.raises(ValueError, match=match):
        export_onnx(model, str(tmp_path / 'm.onnx'), _images(1, 3))


def test_a_quantizer_without_export_rule_is_named(tmp_path):
    model = build('vit', method='repq-ptq')  # log-sqrt(2) softmax grid
    with pytest.raises(ValueError,
                       match=r'student\.backbone\.layers\.0\..*p_quantizer '
                       r"quantizes on the 'log_sqrt2' grid"):
        export_onnx(model, str(tmp_path / 'm.onnx'), _images(1, 3))


def test_opset_below_21_is_refused(tmp_path):
    model = build('vit', stage=0)
    with pytest.raises(ValueError, match='opset=20 is below 21'):
        export_onnx(model, str(tmp_path / 'm.onnx'), _images(1, 3),
                    opset=20)


def _quantize_per_tensor(net: torch.nn.Sequential, x: torch.Tensor) -> None:
    """``net`` (a conv, a ReLU[, a layer]) converted with per-tensor steps,
    the layer after the ReLU quantizing its input unsigned (as deployable
    mode does), calibrated on ``x``, weights quantized, every quantizer on;
    in eval mode (the bias on the accumulator's grid, QLinearConv's)."""
    from gplq_mm.quant import (
        QuantConfig,
        calibration,
        convert,
        quantize_weights,
        set_quant_state,
    )
    from gplq_mm.quant.layers import act_quantizer
    convert(net, QuantConfig(act_granularity='tensor', qwt=False))
    if len(net) > 2:
        net[2].input_quantizer = act_quantizer(
            dict(bits=4, granularity='tensor', signed=False),
            net[0].out_channels, 1)
    net.eval()
    with calibration(net):
        net(x)
    quantize_weights(net)
    set_quant_state(net, weight=True, act=True)


@pytest.mark.parametrize('consumer', [True, False])
def test_a_padded_conv_runs_qlinearconv_before_a_quantizer(consumer,
                                                           tmp_path):
    """A Conv2d that is not a patch embedding: onnxruntime runs it as
    QLinearConv when a quantizer takes its output (through the ReLU), in
    float otherwise; the values of the PyTorch layers either way."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1),
                              torch.nn.ReLU())
    if consumer:
        net.append(torch.nn.Conv2d(8, 4, 3, padding=1))
    x = _images(4, 7)
    _quantize_per_tensor(net, x)
    path = str(tmp_path / 'conv.onnx')
    with torch.no_grad():
        ref = net(x).numpy()
    assert trace(net, x, path)  # a dynamic batch
    assert type(net[0]).__name__ == 'QuantConv2d'  # restored after it
    got = session(path).run(None, {'input': x.numpy()})[0]
    # a code may flip where QLinearConv's fixed-point requantization rounds
    # a value at a half step the other way
    close = np.isclose(got, ref, rtol=1e-4, atol=1e-3)
    assert close.mean() > 0.99, close.mean()
    ops = kernel_ops(path, x.numpy())
    assert ops.get('QLinearConv', 0) == int(consumer), ops
    assert ops.get('Conv', 0) + ops.get('FusedConv', 0) == 1, ops


def test_a_1x1_conv_runs_as_an_integer_matmul_on_transposed_pixels(
        tmp_path):
    """A 1 x 1 conv (FPN laterals, the RPN's heads) exports as a matmul
    over the pixels, which onnxruntime runs as MatMulIntegerToFloat with
    the bias inside, and its producer as QLinearConv: no float tensor
    between them, not even for the sizes (dynamic batch). The pixels move
    by a 3-D Transpose (a 6-D one, the general patch layout, ran ~30x
    slower than a 4-D one of the same bytes on the detector's 800 x 1344
    RPN input); the values of the PyTorch layers."""
    import onnx
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1),
                              torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    x = _images(4, 7)
    _quantize_per_tensor(net, x)
    path = str(tmp_path / 'conv1x1.onnx')
    with torch.no_grad():
        ref = net(x).numpy()
    assert trace(net, x, path)
    got = session(path).run(None, {'input': x.numpy()})[0]
    close = np.isclose(got, ref, rtol=1e-4, atol=1e-3)
    assert close.mean() > 0.99, close.mean()
    ops = kernel_ops(path, x.numpy())
    assert ops.get('MatMulIntegerToFloat', 0) == 1, ops
    assert ops.get('QLinearConv', 0) == 1, ops
    assert 'Add' not in ops and 'DequantizeLinear' not in ops, ops
    perms = [len(a.ints) for n in onnx.load(path).graph.node
             if n.op_type == 'Transpose' for a in n.attribute]
    assert perms and max(perms) <= 4, perms


def test_onnxruntime_adds_a_linear_bias_inside_its_integer_kernel(tmp_path):
    """The session's graph form (bias_into_matmul): each quantized Linear
    (and the patch embedding) with a bias becomes one MatMulIntegerToFloat
    holding it, where
    onnxruntime's own QDQ rule leaves an Add pass after the kernel; the
    outputs are those of the file run as exported, bit for bit."""
    import onnxruntime as ort

    from gplq_mm.deploy.session import bias_into_matmul
    model = build('deit', quant_cfg=dict(deployable=True))
    path = str(tmp_path / 'm.onnx')
    export_onnx(model, path, _images(2, 3))
    linears = sum(isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
                  and is_quant_layer(m) and m.bias is not None
                  for m in model.student.modules())
    fused = bias_into_matmul(onnx.load(path))
    onnx.checker.check_model(fused, full_check=True)
    kernels = [n for n in fused.graph.node
               if n.op_type == 'MatMulIntegerToFloat']
    assert linears and len(kernels) == linears
    assert all(len(n.input) == 7 and n.input[6] for n in kernels)
    x = _images(5, 8).numpy()
    plain = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    for ref, got in zip(plain.run(None, {'input': x}),
                        session(path).run(None, {'input': x})):
        np.testing.assert_array_equal(got, ref)
    raw = collections.Counter(
        n.op_type for n in onnx.load(path).graph.node)['Add']
    assert raw - collections.Counter(
        n.op_type for n in fused.graph.node)['Add'] == linears


def _matmul_graph(bias_dims, float_reader=False):
    """``MatMul(Transpose(DQ(codes)), DQ(weight codes)) + bias`` of a
    (4, 8) input and an (8, 3) weight, the bias of ``bias_dims``;
    ``float_reader``: the transposed float input is a graph output too."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    consts = [numpy_helper.from_array(a, k) for k, a in dict(
        w=rng.integers(-8, 8, (8, 3)).astype(np.int8),
        sw=rng.uniform(.1, .2, 3).astype(np.float32),
        sa=np.array(.05, np.float32), za=np.array(8, np.uint8),
        b=rng.normal(size=bias_dims).astype(np.float32)).items()]
    nodes = [helper.make_node('DequantizeLinear', ['codes', 'sa', 'za'],
                              ['a']),
             helper.make_node('Transpose', ['a'], ['t'], perm=[1, 0]),
             helper.make_node('DequantizeLinear', ['w', 'sw'], ['wf'],
                              axis=1),
             helper.make_node('MatMul', ['t', 'wf'], ['y']),
             helper.make_node('Add', ['y', 'b'], ['out'])]
    outs = [helper.make_tensor_value_info('out', TensorProto.FLOAT, None)]
    if float_reader:
        nodes.append(helper.make_node('Neg', ['t'], ['t2']))
        outs.append(helper.make_tensor_value_info('t2', TensorProto.FLOAT,
                                                  None))
    graph = helper.make_graph(nodes, 'g', [helper.make_tensor_value_info(
        'codes', TensorProto.UINT8, [8, 4])], outs, consts)
    return helper.make_model(graph, opset_imports=[
        helper.make_opsetid('', 21)])


@pytest.mark.parametrize('bias_dims,float_reader,fuses', [
    ((3, ), False, True), ((1, 3), False, True),
    ((1, 1, 3), False, False),  # would broadcast the (4, 3) output to 3-D
    ((4, 3), False, False),  # not one row
    ((3, ), True, False)])  # the layout op's output is read elsewhere
def test_bias_into_matmul_keeps_what_the_kernel_cannot_hold(
        bias_dims, float_reader, fuses):
    import onnxruntime as ort

    from gplq_mm.deploy.session import bias_into_matmul
    proto = _matmul_graph(bias_dims, float_reader)
    x = {'codes': np.random.default_rng(1).integers(
        0, 16, (8, 4)).astype(np.uint8)}
    ref = ort.InferenceSession(proto.SerializeToString(), providers=[
        'CPUExecutionProvider']).run(None, x)
    fused = bias_into_matmul(type(proto).FromString(
        proto.SerializeToString()))
    ops = [n.op_type for n in fused.graph.node]
    assert ('MatMulIntegerToFloat' in ops) == fuses, ops
    assert ('Add' in ops) != fuses, ops
    got = session(fused).run(None, x)
    for r, g in zip(ref, got):
        assert r.shape == g.shape
        np.testing.assert_allclose(g, r, rtol=1e-6)


def test_float16_storage_halves_only_the_float_matrices(tmp_path):
    model = build('deit', quant_cfg=dict(deployable=True))
    runtime = str(tmp_path / 'm.onnx')
    export_onnx(model, runtime, _images(4, 3))
    exact = to_storage(runtime, str(tmp_path / 'exact.onnx'))
    half = to_storage(runtime, str(tmp_path / 'half.onnx'), float16=True)
    assert half['halved'] > 0 and exact['halved'] == 0
    assert half['bytes'] < exact['bytes']
    before = {t.name: onnx.numpy_helper.to_array(t)
              for t in onnx.load(runtime).graph.initializer}
    after = {t.name: onnx.numpy_helper.to_array(t)
             for t in load_storage(half['path']).graph.initializer}
    assert before.keys() == after.keys()
    matrices = 0
    for k, a in before.items():
        b = after[k]
        assert b.dtype == a.dtype, k
        if a.dtype == np.float32 and sum(d > 1 for d in a.shape) > 1:
            matrices += 1  # rounded to FP16
            a = a.astype(np.float16).astype(np.float32)
        assert np.array_equal(a, b), k
    assert matrices == half['halved']
    x = _images(4, 5).numpy()
    ref = session(runtime).run(None, {'input': x})[0]
    for model_ in (half['path'], load_storage(half['path'])):
        got = session(model_).run(None, {'input': x})[0]
        np.testing.assert_allclose(got, ref, atol=0.05 * np.abs(ref).max())


def test_onnx_classifier_runs_a_fixed_batch_model_on_any_batch(tmp_path):
    """mmpretrain's Swin exports with a fixed batch size: ONNXClassifier
    runs 7 images through a 4-image model in padded chunks."""
    from gplq_mm.deploy import ONNXClassifier
    model = build('swin', quant_cfg=dict(deployable=True))
    path = str(tmp_path / 'swin.onnx')
    assert not export_onnx(model, path, _images(4, 3))['dynamic_batch']
    onnx_model = ONNXClassifier(path, dict(mean=[0.] * 3, std=[1.] * 3))
    assert onnx_model.session.get_inputs()[0].shape[0] == 4
    x = _images(7, 8)
    with torch.no_grad():
        ref = model.deploy_graph()[0](x).numpy()
    got = onnx_model.logits(x).numpy()
    assert got.shape == ref.shape
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 6 / 7
    samples = onnx_model(x, mode='predict')
    assert [int(s.pred_label) for s in samples] == list(got.argmax(1))


def test_detector_trunk_export_and_feature_parity(tmp_path):
    """A GPLQ Mask R-CNN (the demo architecture, random weights) exports its
    trunk (Swin backbone, FPN, RPN head); onnxruntime's feature maps and RPN
    outputs are PyTorch's."""
    from mmengine.config import Config

    from gplq_mm.deploy import parity
    from gplq_mm.deploy.det_export import trunk_outputs
    from gplq_mm.quant import calibration
    cfg = Config.fromfile('configs/demo/mask-rcnn_swin-tiny_digits_fp.py')
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(dict(type='GPLQDetector',
                                  architecture=cfg.model,
                                  method='gplq-deploy')).eval()
    batches = [dict(inputs=_images(2, seed) * 2) for seed in range(3)]
    with calibration(model.student):
        for b in batches:
            model.student.extract_feat(b['inputs'])
    model.set_stage(1)
    model.weight_ptq(batches)
    path = str(tmp_path / 'trunk.onnx')
    info = export_onnx(model, path, batches[0]['inputs'])
    assert info['outputs'] == trunk_outputs(5)
    assert not info['per_channel']
    assert not info['dynamic_batch']  # mmdet's Swin: fixed, 2 images
    # 3 images: a padded chunk, and window tensors with 64 rows per image
    report = parity(model, session(path), [_images(3, 9) * 2])
    assert report['images'] == 3
    # end to end, a float rounding (~1e-7 relative between the runtimes)
    # that lands a value on the other side of a 4-bit boundary flips a
    # code, and the flips compound through the trunk: how far depends on
    # the CPU (measured: under 0.05 on an AMD EPYC, 0.053 on an Intel Xeon
    # with AMX, where each quantizer's codes of its own input were all
    # equal, the check below)
    for i in range(15):
        assert report[f'rel_l2[{i}]'] < 0.1, report
    x = _images(3, 9) * 2
    agree = code_agreement(model, path, [x])
    assert min(agree['same_input']) >= 0.9999, agree
    # the padded chunk counts only its image: 3 images = 2 + 1
    two, one = (code_agreement(model, path, [b]) for b in (x[:2], x[2:]))
    np.testing.assert_allclose(
        agree['end_to_end'],
        (2 * np.array(two['end_to_end']) + one['end_to_end']) / 3)


@pytest.mark.parametrize('host', ['vit', 'swin'])
def test_openvino_runs_the_exported_model(host, tmp_path):
    """OpenVINO, a second runtime of the same file: its graph form
    (clip_before_quantize, then signed_codes) computes onnxruntime's codes
    and outputs in onnxruntime itself; in OpenVINO at f32 the Linear layers
    run on its s8 x s8 kernels and the logits are onnxruntime's (up to a
    flipped code); any batch size runs."""
    pytest.importorskip('openvino')
    from gplq_mm.deploy.session import (
        _constants,
        clip_before_quantize,
        openvino_kernels,
        run_batched,
        signed_codes,
    )
    model = build(host, quant_cfg=dict(deployable=True))
    path = str(tmp_path / 'm.onnx')
    export_onnx(model, path, _images(4, 3))
    x = _images(7, seed=11).numpy()
    ref = run_batched(session(path), x)[0]
    moved = clip_before_quantize(onnx.load(path))
    producer = {o: n.op_type for n in moved.graph.node for o in n.output}
    clips = [n for n in moved.graph.node if n.op_type == 'Clip']
    assert clips and all(producer.get(n.input[0]) != 'QuantizeLinear'
                         for n in clips)
    np.testing.assert_array_equal(run_batched(session(moved), x)[0], ref)
    # the signed grids' codes as int8, zero point 0; the softmax's unsigned
    # ones as they were
    signed = signed_codes(copy.deepcopy(moved))
    zeros = _constants(signed.graph)
    kinds = collections.Counter(
        (onnx.helper.tensor_dtype_to_np_dtype(
            zeros[n.input[2]].data_type).name, 'p_quantizer' in n.name)
        for n in signed.graph.node if n.op_type == 'QuantizeLinear')
    assert kinds['int8', False] > 0 and kinds['uint8', True] > 0, kinds
    assert kinds['uint8', False] == 0, kinds
    # the same outputs in onnxruntime's reference kernels (its graph
    # optimizer fails on int8 activation codes read through a Transpose,
    # a type error in its own Q / DQ propagation; its sessions keep uint8)
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = [ort.InferenceSession(m.SerializeToString(), opts,
                                  providers=['CPUExecutionProvider'])
             for m in (moved, signed)]
    np.testing.assert_array_equal(*(run_batched(p, x)[0] for p in plain))
    ov = session(path, runtime='openvino-f32')
    got = run_batched(ov, x)[0]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=0.02 * np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all()
    fc = openvino_kernels(ov)['FullyConnected']
    linears = sum(isinstance(m, torch.nn.Linear) and is_quant_layer(m)
                  and m.weight_quantizer.enabled
                  for m in model.student.modules())
    assert linears and fc.get('i8', 0) >= linears, fc
    assert ov.precision == 'f32'
    with pytest.raises(ValueError, match='runtime'):
        session(path, runtime='tensorrt')
