"""The shipped configs, checked through what they build."""
import glob
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import HOOKS, MODELS, DefaultScope

import gplq_mm  # noqa: F401
from gplq_mm.quant import QuantConv2d, QuantLinear, iter_quantizers

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLS = sorted(glob.glob(osp.join(ROOT, 'configs', 'gplq', '*.py')))
DET = sorted(glob.glob(osp.join(ROOT, 'configs', 'gplq_det', 'gplq_*.py')))


@pytest.mark.parametrize('path', CLS + DET, ids=osp.basename)
def test_config_builds_the_paper_recipe(path):
    """AdamW at a constant 5e-6 without weight decay, no scheduler, one
    epoch, the GPLQ hook with the paper's image counts, the GPLQ model of
    its task around the host's architecture."""
    cfg = Config.fromfile(path)
    det = '/gplq_det/' in path
    optim = build_optim_wrapper(nn.Linear(2, 2), cfg.optim_wrapper)
    assert type(optim.optimizer) is torch.optim.AdamW
    assert [(g['lr'], g['weight_decay'])
            for g in optim.optimizer.param_groups] == [(5e-6, 0.0)]
    assert cfg.param_scheduler == []
    # the exactly resumable loop, a checkpoint every 2000 iterations
    assert cfg.train_cfg == dict(type='GPLQTrainLoop', max_epochs=1,
                                 val_interval=1)
    ckpt = cfg.default_hooks.checkpoint
    assert (ckpt.by_epoch, ckpt.interval, ckpt.backend_args) == (
        False, 2000, dict(backend='gplq_atomic'))
    assert cfg.train_dataloader.batch_size == (1 if det else 16)
    hooks = [HOOKS.build(h) for h in cfg.custom_hooks]
    assert [type(h).__name__ for h in hooks] == ['GPLQHook']
    assert (hooks[0].calib_images, hooks[0].ptq_images) == (256, 512)
    if det:
        from mmdet.registry import MODELS as HOST_MODELS
        from mmdet.utils import register_all_modules
    else:
        from mmpretrain.registry import MODELS as HOST_MODELS
        from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    wrapper = MODELS.get(cfg.model.type)
    host = HOST_MODELS.get(cfg.model.architecture.type)
    assert wrapper.__name__ == ('GPLQDetector' if det else 'GPLQClassifier')
    assert host.__name__ in (('CascadeRCNN', 'MaskRCNN') if det else
                             ('ImageClassifier', ))
    if det:
        assert cfg.model.scope == ('full' if path.endswith('_full.py') else
                                   'backbone')
    else:
        assert hooks[0].pca_images == 10000


def _bits(model):
    """{(role, bits)} of the student's quantizers outside the patch
    embedding."""
    return {(q.role, q.bits) for n, q in iter_quantizers(model.student)
            if 'patch_embed' not in n}


@pytest.mark.parametrize('name', ['deit-s-distilled_8xb16_w4a4',
                                  'swin-t_8xb16_w3a3'])
def test_real_architectures_convert_and_run(name):
    cfg = Config.fromfile(
        osp.join(ROOT, f'configs/gplq/gplq_{name}_in1k.py'))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model)
    bits = 3 if 'w3a3' in name else 4
    assert _bits(model) == {('act', bits), ('weight', bits)}
    pe = [q.bits for n, q in iter_quantizers(model.student, 'act')
          if 'patch_embed' in n]
    assert pe == [8]
    qs = dict(iter_quantizers(model.student))
    assert any(n.endswith('p_quantizer') for n in qs)
    assert not any(n.startswith('head') for n in qs)  # the head stays float
    # DeiT: class and distillation tokens (2 x 384); Swin-T: 768.
    assert model.pca.dim == (768 if 'swin' in name else 2 * 384)
    x = torch.randn(1, 3, 224, 224)
    model.eval()
    with torch.no_grad():
        model.calibrate([dict(inputs=x)])
        out = model(x)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize('name', [
    'gplq_mask-rcnn_swin-t-p4-w7_fpn_1x_coco_w4a4.py',
    'gplq_cascade-mask-rcnn_swin-t-p4-w7_fpn_ms-3x_coco_w4a4_full.py'
])
def test_real_detectors_convert(name):
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'gplq_det', name))
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    kinds = {n.split('.')[0] for n, m in model.student.named_modules()
             if isinstance(m, (QuantConv2d, QuantLinear))}
    full = name.endswith('_full.py')
    assert kinds == ({'backbone', 'neck', 'rpn_head', 'roi_head'} if full
                     else {'backbone'})
    assert _bits(model) == {('act', 4), ('weight', 4)}
    if cfg.model.checkpoint is None:  # cascade: no official mmdet 3 weights
        with pytest.raises(ValueError, match='checkpoint is not set'):
            model.init_weights()
    # calibration reaches every quantizer (heads included) on one annotated
    # image, though a randomly initialized detector detects nothing
    model.calibrate([_annotated_image(model)])
    assert all(bool(q.initialized)
               for _, q in iter_quantizers(model.student, 'act'))


def _annotated_image(model):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    h = w = 224
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                         pad_shape=(h, w), scale_factor=(1.,
                                                                         1.),
                                         batch_input_shape=(h, w)))
    mask = torch.zeros(1, h, w, dtype=torch.uint8)
    mask[:, 40:120, 60:150] = 1
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor([[60., 40., 150., 120.]]),
        labels=torch.tensor([3]), masks=BitmapMasks(mask.numpy(), h, w))
    torch.manual_seed(0)
    return dict(inputs=torch.randn(1, 3, h, w), data_samples=[sample])


def test_cascade_is_the_swin_authors_architecture_and_their_keys_load():
    """4conv1fc box heads with GIoU on decoded boxes in all 3 stages; a
    checkpoint in the Swin authors' (mmdet 2.x) key layout, converted by
    tools/convert_swin_det.py, loads strictly."""
    import importlib.util

    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(osp.join(
        ROOT, 'configs/gplq_det/_base_/'
        'cascade-mask-rcnn_swin-t-p4-w7_fpn_ms-3x_coco.py'))
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    heads = model.roi_head.bbox_head
    assert [type(h).__name__ for h in heads] == ['Shared4Conv1FCBBoxHead'] * 3
    assert all(type(h.loss_bbox).__name__ == 'GIoULoss' and h.reg_decoded_bbox
               and not h.reg_class_agnostic for h in heads)
    own = model.state_dict()
    # the same tensors under the authors' names
    renames = (('backbone.stages.', 'backbone.layers.'),
               ('.attn.w_msa.', '.attn.'), ('.ffn.layers.0.0.', '.mlp.fc1.'),
               ('.ffn.layers.1.', '.mlp.fc2.'),
               ('patch_embed.projection', 'patch_embed.proj'))
    theirs = {}
    for k, v in own.items():
        for a, b in renames:
            k = k.replace(a, b)
        theirs[k] = v
    spec = importlib.util.spec_from_file_location(
        'convert_swin_det', osp.join(ROOT, 'tools/convert_swin_det.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    converted = tool.convert(theirs)
    model.load_state_dict(converted, strict=True)
    key = 'backbone.stages.2.blocks.1.attn.w_msa.qkv.weight'
    assert torch.equal(converted[key], own[key])
    with pytest.raises(ValueError, match='already mmdet 3.x'):
        tool.convert(own)


def test_stage1_regularization_none_turns_off_what_the_host_adds():
    """Swin-T's host trains with Mixup / CutMix, label smoothing, drop_path
    0.2, RandAugment and RandomErasing: 'none' removes each, keeps the crop,
    the flip and everything else of the config."""
    from gplq_mm.recipes import classification
    host = Config.fromfile(osp.join(
        ROOT, 'configs/gplq/gplq_swin-t_8xb16_w4a4_in1k.py'))
    assert host.model.architecture.train_cfg.augments  # Mixup / CutMix
    base = Config(dict(model=host.model.architecture,
                       train_dataloader=host.train_dataloader))
    on = classification(base, None, stage1_regularization='host')
    off = classification(base, None, stage1_regularization='none')
    arch = off['model']['architecture']
    assert arch['train_cfg'] is None
    assert arch['backbone']['drop_path_rate'] == 0.0
    assert arch['head']['loss']['type'] == 'CrossEntropyLoss'
    assert [t['type'] for t in off['train_dataloader']['dataset'][
        'pipeline']] == ['LoadImageFromFile', 'RandomResizedCrop',
                         'RandomFlip', 'PackInputs']
    assert on['model']['architecture'] == host.model.architecture
    assert 'dataset' not in on['train_dataloader']
    assert arch['backbone']['arch'] == host.model.architecture.backbone.arch
    with pytest.raises(ValueError, match="use 'host' or 'none'"):
        classification(base, None, stage1_regularization='light')
