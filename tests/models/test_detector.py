import copy

import pytest
import torch
import torch.nn as nn
from mmengine.registry import MODELS, DefaultScope
from mmengine.runner import Runner

import gplq_mm  # noqa: F401
from gplq_mm.quant import (
    QuantConv2d,
    QuantConvTranspose2d,
    QuantLinear,
    iter_quantizers,
)
from gplq_mm.utils import mmengine_checkpoint_globals
from tests.helpers import gplq_det_cfg, load_ckpt


def _build(root, scope='backbone', checkpoint=None):
    cfg = gplq_det_cfg(root, '/tmp/unused', checkpoint, scope=scope)
    with DefaultScope.overwrite_default_scope('mmdet'):
        return MODELS.build(cfg.model)


def _quantized_names(model):
    return {n for n, m in model.student.named_modules()
            if isinstance(m, (QuantConv2d, QuantLinear))}


def test_backbone_scope_quantizes_only_the_backbone(digit_coco_root):
    model = _build(digit_coco_root, 'backbone')
    names = _quantized_names(model)
    assert names and all(n.startswith('backbone.') for n in names)
    for n, m in model.student.named_modules():
        if n.startswith(('neck', 'rpn_head', 'roi_head')):
            assert not isinstance(m, (QuantConv2d, QuantLinear)), n


def test_full_scope_quantizes_the_whole_detector(digit_coco_root):
    model = _build(digit_coco_root, 'full')
    names = _quantized_names(model)
    for prefix in ('backbone.', 'neck.lateral_convs', 'neck.fpn_convs',
                   'rpn_head.rpn_conv', 'rpn_head.rpn_cls',
                   'roi_head.bbox_head.shared_fcs',
                   'roi_head.bbox_head.fc_cls', 'roi_head.mask_head.convs',
                   'roi_head.mask_head.conv_logits'):
        assert any(n.startswith(prefix) for n in names), prefix
    # Every Conv2d / Linear / ConvTranspose2d is quantized, the mask head's
    # 2x2 upsampling too.
    for n, m in model.student.named_modules():
        if type(m) in (nn.Conv2d, nn.Linear, nn.ConvTranspose2d):
            pytest.fail(f'float {type(m).__name__} left at {n}')
    assert isinstance(model.student.roi_head.mask_head.upsample,
                      QuantConvTranspose2d)
    pe = model.student.backbone.patch_embed.projection
    assert isinstance(pe, QuantConv2d) and pe.input_quantizer.bits == 8


def test_bad_scope_and_architecture(digit_coco_root):
    with pytest.raises(ValueError, match="scope='neck' is not allowed"):
        _build(digit_coco_root, 'neck')
    cfg = gplq_det_cfg(digit_coco_root, '/tmp/unused', None)
    arch = copy.deepcopy(cfg.model.architecture)
    arch.update(type='RetinaNet', rpn_head=None, roi_head=None,
                bbox_head=dict(type='RetinaHead', num_classes=10,
                               in_channels=64, feat_channels=64,
                               anchor_generator=dict(
                                   type='AnchorGenerator', octave_base_scale=4,
                                   scales_per_octave=3, ratios=[1.0],
                                   strides=[8, 16, 32, 64, 128]),
                               bbox_coder=dict(type='DeltaXYWHBBoxCoder')))
    arch.pop('rpn_head')
    arch.pop('roi_head')
    arch.train_cfg = None
    arch.test_cfg = None
    with pytest.raises(TypeError, match='two-stage detector.*RetinaNet'):
        with DefaultScope.overwrite_default_scope('mmdet'):
            MODELS.build(dict(type='GPLQDetector', architecture=arch))


def test_data_without_masks_fails_before_training(digit_coco_root,
                                                   det_fp_checkpoint,
                                                   tmp_path):
    cfg = gplq_det_cfg(digit_coco_root, str(tmp_path), det_fp_checkpoint)
    pipe = cfg.train_dataloader.dataset.pipeline
    pipe[1] = dict(type='LoadAnnotations', with_bbox=True, with_mask=False)
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match='no instance masks'):
        runner.train()
    assert runner.iter == 0


@pytest.mark.parametrize('scope', ['backbone', 'full'])
def test_gplq_run_and_reload_into_test(digit_coco_root, det_fp_checkpoint,
                                       tmp_path, scope):
    cfg = gplq_det_cfg(digit_coco_root, str(tmp_path), det_fp_checkpoint,
                       scope=scope)
    runner = Runner.from_cfg(cfg)
    seen = {}
    orig = runner.model.loss

    def spy(inputs, data_samples):
        # Stage 1: activations on, weights never fake-quantized.
        qs = dict(iter_quantizers(runner.model.student))
        seen['act'] = all(q.enabled for q in qs.values() if q.role == 'act')
        seen['weight'] = any(q.enabled for q in qs.values()
                             if q.role == 'weight')
        return orig(inputs, data_samples)

    runner.model.loss = spy
    runner.train()
    assert seen == {'act': True, 'weight': False}
    assert runner.model.stage == 2
    test_cfg = gplq_det_cfg(digit_coco_root, str(tmp_path / 't'), None,
                            scope=scope)
    test_cfg.load_from = str(tmp_path / 'gplq_w4a4.pth')
    tester = Runner.from_cfg(test_cfg)
    with mmengine_checkpoint_globals():
        metrics = tester.test()
    assert tester.model.stage == 2
    assert {'coco/bbox_mAP', 'coco/segm_mAP'} <= set(metrics)
    for (n, a), (_, b) in zip(runner.model.student.state_dict().items(),
                              tester.model.student.state_dict().items()):
        assert torch.equal(a, b), n
    # the quantization report reaches every quantizer, heads included
    from gplq_mm.analysis import collect
    model = runner.model
    batches = [model.data_preprocessor(d, False)
               for d in tester.test_dataloader]
    report = collect(model, batches)
    names = {r['name'].split('.')[0] for r in report['quantizers']}
    assert names == ({'backbone', 'neck', 'rpn_head', 'roi_head'}
                     if scope == 'full' else {'backbone'})
    assert len(report['blocks']) == 6 and 'pca' not in report  # 2+2+2


def test_resume_continues_stage1(digit_coco_root, det_fp_checkpoint,
                                 tmp_path):
    cfg = gplq_det_cfg(digit_coco_root, str(tmp_path), det_fp_checkpoint,
                       max_epochs=1)
    cfg.custom_hooks[0]['weight_ptq'] = False
    Runner.from_cfg(cfg).train()
    cfg = gplq_det_cfg(digit_coco_root, str(tmp_path), det_fp_checkpoint,
                       max_epochs=2)
    cfg.custom_hooks[0]['weight_ptq'] = False
    cfg.resume = True
    resumed = Runner.from_cfg(cfg)
    calls = []
    resumed.model.calibrate = lambda *a: calls.append('calibrate')
    with mmengine_checkpoint_globals():
        resumed.train()
    assert calls == [] and resumed.epoch == 2
    assert resumed.model.stage == 1
    state = load_ckpt(tmp_path / 'epoch_2.pth')['state_dict']
    assert int(state['gplq_stage']) == 1


def test_calibration_reaches_the_heads_of_a_detector_that_detects_nothing(
        digit_coco_root, det_fp_checkpoint, tmp_path):
    """With a score threshold no detection passes, predict never reaches
    the RoI heads; calibration takes the training path and still sets every
    quantizer of the full scope, without touching the RNG that training
    uses next."""
    cfg = gplq_det_cfg(digit_coco_root, str(tmp_path), det_fp_checkpoint,
                       scope='full')
    cfg.model.architecture.test_cfg.rcnn.score_thr = 1.01
    runner = Runner.from_cfg(cfg)
    model = runner.model
    model.init_weights()
    batches = [model.data_preprocessor(d, False)
               for d in runner.train_dataloader]
    with torch.no_grad():
        model.eval()
        out = model.student.predict(batches[0]['inputs'],
                                    batches[0]['data_samples'])
    assert all(len(s.pred_instances) == 0 for s in out)
    torch.manual_seed(7)
    model.calibrate(batches)
    after = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after, torch.rand(3))
    qs = dict(iter_quantizers(model.student, 'act'))
    assert any(n.startswith('roi_head.mask_head') for n in qs)
    assert all(bool(q.initialized) for q in qs.values())
