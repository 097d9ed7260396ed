"""The split detector export: trunk, box and mask graphs in onnxruntime
with mmdet's own code between them computes what the PyTorch detector
computes; every quantized layer runs an integer kernel in deployable mode;
bad input is refused by name."""
import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope
from mmengine.runner import Runner

import gplq_mm  # noqa: F401
from gplq_mm.deploy import export_detector
from gplq_mm.deploy.det_export import (
    check_detector,
    detector_graphs,
    detector_test_config,
    graph_inputs,
    read_manifest,
)
from gplq_mm.deploy.verify import (
    NOT_REQUANTIZED,
    QUANTIZED_ON_FLOAT,
    check_graph,
)
from gplq_mm.quant import set_quant_state
from tests.helpers import gplq_det_cfg


def _mmdet_base(name, tmp_path):
    """mmdet's ``_base_/models/<name>.py`` model config."""
    path = tmp_path / f'{name}.py'
    path.write_text(f"_base_ = 'mmdet::_base_/models/{name}.py'\n")
    return Config.fromfile(str(path)).model


def _cascade(arch, tmp_path):
    """The demo architecture with mmdet's 3-stage Cascade RoI head."""
    base = _mmdet_base('cascade-mask-rcnn_r50_fpn', tmp_path)
    roi = copy.deepcopy(base.roi_head)
    roi.bbox_roi_extractor.out_channels = 64
    roi.mask_roi_extractor.out_channels = 64
    for head in roi.bbox_head:
        head.update(in_channels=64, fc_out_channels=256, num_classes=10)
    roi.mask_head.update(in_channels=64, conv_out_channels=64,
                         num_classes=10)
    arch = copy.deepcopy(arch)
    arch.update(type='CascadeRCNN', roi_head=roi,
                train_cfg=base.train_cfg, test_cfg=base.test_cfg)
    arch.train_cfg.rpn_proposal.update(nms_pre=600, max_per_img=300)
    arch.test_cfg.rpn.update(nms_pre=300, max_per_img=100)
    arch.test_cfg.rcnn.max_per_img = 20
    return arch


def _batches(cfg, model, n=2):
    with DefaultScope.overwrite_default_scope('mmdet'):
        loader = Runner.build_dataloader(dict(cfg.val_dataloader,
                                              batch_size=2))
    out = []
    for data in loader:
        out.append(model.data_preprocessor(data, False))
        if len(out) == n:
            return out
    return out


def _w4a4(cfg):
    """A GPLQ W4A4 detector of ``cfg`` (deployable, scope full) calibrated
    and weight-quantized on its val images."""
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    batches = _batches(cfg, model)
    model.calibrate(batches)
    model.set_stage(1)
    model.weight_ptq(batches)
    model.eval()
    return model, batches


def _cfg(root, work, checkpoint, cascade=False):
    cfg = gplq_det_cfg(root, str(work), checkpoint, scope='full')
    cfg.model.method = 'gplq-deploy'
    if cascade:
        cfg.model.architecture = _cascade(cfg.model.architecture, work)
        cfg.model.checkpoint = None
    return cfg


def _matched(a, b, iou=0.9):
    """Share of ``a``'s detections (DetDataSamples' pred_instances) with a
    detection in ``b`` of the same label and IoU >= ``iou``."""
    from mmdet.structures.bbox import bbox_overlaps
    hits = total = 0
    for x, y in zip(a, b):
        x, y = x.pred_instances, y.pred_instances
        total += len(x)
        if not len(x) or not len(y):
            continue
        o = bbox_overlaps(x.bboxes, y.bboxes)
        same = x.labels[:, None] == y.labels[None, :]
        hits += int(((o >= iou) & same).any(1).sum())
    return hits / max(total, 1)


def _predict(model, batches):
    with torch.no_grad():
        return [s for b in batches for s in model.predict(
            b['inputs'], copy.deepcopy(b['data_samples']))]


def _onnx(cfg, export, form):
    cfg = copy.deepcopy(cfg)
    detector_test_config(cfg, export, form)
    with DefaultScope.overwrite_default_scope('mmdet'):
        return MODELS.build(cfg.model)


@pytest.mark.parametrize('cascade', [False, True])
def test_exported_detector_computes_the_pytorch_detector(
        cascade, digit_coco_root, det_fp_checkpoint, tmp_path):
    cfg = _cfg(digit_coco_root, tmp_path, det_fp_checkpoint, cascade)
    model, batches = _w4a4(cfg)
    canvas = batches[0]['inputs'][:1]
    manifest = export_detector(model, str(tmp_path), 'det', [canvas])
    stages = 3 if cascade else 1
    assert [g['name'] for g in manifest['roi']] == [
        f'{k}{s}' for k in ('bbox', 'mask') for s in range(stages)]
    assert all(g['batch'] is None for g in manifest['roi'])  # dynamic RoIs
    assert read_manifest(str(tmp_path / 'det_detector.json')) == manifest
    # FP32 graphs == the PyTorch model with every quantizer off
    with set_quant_state(model.student, weight=False, act=False, qwt=False):
        ref = _predict(model.student, batches)
    got = _predict(_onnx(cfg, str(tmp_path), 'fp32'), batches)
    assert sum(len(s.pred_instances) for s in ref) > 0
    assert _matched(ref, got, 0.99) == 1 and _matched(got, ref, 0.99) == 1
    for r, g in zip(ref, got):
        torch.testing.assert_close(g.pred_instances.scores,
                                   r.pred_instances.scores, atol=1e-4,
                                   rtol=1e-3)
        assert (g.pred_instances.masks == r.pred_instances.masks).float(
        ).mean() > 0.999
    # W4A4 graphs (and their INT4 storage files) ~ the PyTorch W4A4 model
    ref = _predict(model.student, batches)
    runtime = _predict(_onnx(cfg, str(tmp_path), 'runtime'), batches)
    storage = _predict(_onnx(cfg, str(tmp_path), 'storage'), batches)
    # (end to end, code flips compound through the trunk, as far as the
    # CPU's float kernels take them: at least 0.9 on an AMD EPYC, 0.85 and
    # 0.86 on an Intel Xeon with AMX)
    assert _matched(ref, runtime) >= 0.8, _matched(ref, runtime)
    for r, s in zip(runtime, storage):
        assert torch.equal(r.pred_instances.bboxes, s.pred_instances.bboxes)


def test_every_quantized_layer_of_every_graph_runs_an_integer_kernel(
        digit_coco_root, det_fp_checkpoint, tmp_path):
    cfg = _cfg(digit_coco_root, tmp_path, det_fp_checkpoint)
    model, batches = _w4a4(cfg)
    manifest = export_detector(model, str(tmp_path), 'det',
                               [batches[0]['inputs'][:1]])
    inputs = graph_inputs(model, manifest, [b['inputs'] for b in batches])
    graphs = dict(detector_graphs(model))
    for g in [manifest['trunk'][0]] + manifest['roi']:
        paths = {k: str(tmp_path / f) for k, f in g['files'].items()}
        report = check_graph(model, paths, inputs[g['name']],
                             graphs[g['name'].split('_')[0]])
        k = report['kernels']
        assert k['integer'] > 0, (g['name'], k)
        wrong = [f for f in k['float_nodes'] if f['why'] == QUANTIZED_ON_FLOAT]
        assert not wrong, (g['name'], wrong)
        # Swin's window attention too, its operands requantized (regrid)
        attention = [f for f in k['float_nodes']
                     if f['why'].startswith('activation x activation')]
        assert not attention, (g['name'], attention)
        # every conv requantized, so onnxruntime runs it as QLinearConv: the
        # FPN's output convs (their outputs requantized at 8 bits) and the
        # RPN conv (its two heads share one quantizer)
        slow = [f['module'] for f in k['float_nodes']
                if f['why'] == NOT_REQUANTIZED]
        assert not slow, slow
        if g['name'] != 'trunk_128x128':  # RoI heads: all integer
            assert not k['float_nodes'], k['float_nodes']
        if g['name'] == 'mask0':  # ReLU -> unsigned grid -> QLinearConv;
            # the deconvolution and the logits as integer matmuls
            assert k['ops'].get('QLinearConv') == 4, k['ops']
            assert k['ops'].get('MatMulIntegerToFloat') == 2, k['ops']
        assert report['codes']['same_input_min'] >= 0.999, report['codes']
        # End to end, a bound for gross errors only: the runtimes' float ops
        # agree to ~1e-7 relative (2e-6 of a step at each quantizer before
        # the first flip, measured on test_onnx's trunk), yet one value that
        # close to a 4-bit boundary flips a code and the trunk amplifies it,
        # as far as the CPU's rounding puts the first flip early (the RPN
        # scores here: under 0.1 on an AMD EPYC, up to 0.30 on an Intel Xeon
        # with AMX). The RoI heads, on the same input: ~2e-7.
        for key, v in report['parity'].items():
            if key.startswith('rel_l2'):
                assert v < (0.5 if g['name'].startswith('trunk') else 0.02), (
                    g['name'], report['parity'])


def test_a_smaller_batch_is_padded_to_the_canvas_and_a_larger_refused(
        digit_coco_root, det_fp_checkpoint, tmp_path):
    cfg = _cfg(digit_coco_root, tmp_path, det_fp_checkpoint)
    model, batches = _w4a4(cfg)
    export_detector(model, str(tmp_path), 'det', [batches[0]['inputs'][:1]])
    onnx_model = _onnx(cfg, str(tmp_path), 'fp32')
    b = batches[0]
    small = b['inputs'][..., :96, :96]
    padded = torch.nn.functional.pad(small, (0, 32, 0, 32))
    with set_quant_state(model.student, weight=False, act=False, qwt=False):
        ref = _predict(model.student, [dict(b, inputs=padded)])
    got = _predict(onnx_model, [dict(b, inputs=small)])
    assert _matched(ref, got, 0.99) == 1 and _matched(got, ref, 0.99) == 1
    big = torch.nn.functional.pad(b['inputs'], (0, 32))
    with pytest.raises(ValueError, match=r'does not fit the exported '
                       r'canvases \[\(128, 128\)\].*--shape H W'):
        onnx_model.predict(big, copy.deepcopy(b['data_samples']))


def test_bad_input_is_refused_by_name(digit_coco_root, det_fp_checkpoint,
                                      tmp_path):
    # a single-stage detector
    retina = _mmdet_base('retinanet_r50_fpn', tmp_path)
    retina.backbone.update(depth=18, init_cfg=None)
    retina.neck.in_channels = [64, 128, 256, 512]
    with DefaultScope.overwrite_default_scope('mmdet'):
        det = MODELS.build(retina)
    with pytest.raises(ValueError, match='RetinaNet has no export rule: '
                       'tools/export.py exports two-stage detectors'):
        check_detector(det)
    # a Stage-1 model
    cfg = _cfg(digit_coco_root, tmp_path, det_fp_checkpoint)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    batches = _batches(cfg, model, 1)
    model.calibrate(batches)
    model.set_stage(1)
    with pytest.raises(ValueError, match='Stage-1 checkpoint'):
        export_detector(model, str(tmp_path), 'det', [batches[0]['inputs']])
    # graphs of another class count than the config's
    model.weight_ptq(batches)
    export_detector(model, str(tmp_path), 'det', [batches[0]['inputs'][:1]])
    other = copy.deepcopy(cfg)
    arch = other.model.architecture
    arch.roi_head.bbox_head.num_classes = 3
    arch.roi_head.mask_head.num_classes = 3
    with pytest.raises(ValueError, match=r'do not match the config: '
                       r'num_classes is \[10\] in the export, \[3\]'):
        detector_test_config(other, str(tmp_path))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='expected one \\*_detector.json'):
        detector_test_config(copy.deepcopy(cfg), str(tmp_path / 'empty'))
