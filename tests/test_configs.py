import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope

import gplq_mm  # noqa: F401
from gplq_mm.quant import iter_quantizers

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'gplq', '*.py')))


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_config_is_the_paper_recipe(path):
    cfg = Config.fromfile(path)
    assert cfg.model.type == 'GPLQClassifier'
    assert cfg.model.checkpoint.startswith('https://download.openmmlab.com')
    bits = 3 if 'w3a3' in path else 4
    assert cfg.model.quant_cfg == dict(w_bits=bits, a_bits=bits)
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=5e-6,
                                               weight_decay=0.0)
    assert cfg.param_scheduler == [] and cfg.train_cfg.max_epochs == 1
    assert cfg.train_dataloader.batch_size == 16
    assert cfg.custom_hooks[0].type == 'GPLQHook'


@pytest.mark.parametrize('name', ['deit-s-distilled', 'swin-t'])
def test_real_architectures_convert_and_run(name):
    cfg = Config.fromfile(
        osp.join(ROOT, f'configs/gplq/gplq_{name}_8xb16_w4a4_in1k.py'))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model)
    qs = dict(iter_quantizers(model.student))
    assert any(n.endswith('p_quantizer') for n in qs)
    # DeiT: class and distillation tokens (2 x 384); Swin-T: 768.
    assert model.pca.dim == {'deit-s-distilled': 2 * 384, 'swin-t': 768}[name]
    x = torch.randn(1, 3, 224, 224)
    model.eval()
    with torch.no_grad():
        model.calibrate([dict(inputs=x)])
        out = model(x)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


DET_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'gplq_det',
                                        'gplq_*.py')))


@pytest.mark.parametrize('path', DET_CONFIGS, ids=osp.basename)
def test_det_config_is_the_paper_recipe(path):
    cfg = Config.fromfile(path)
    assert cfg.model.type == 'GPLQDetector'
    assert cfg.model.scope == ('full' if path.endswith('_full.py') else
                               'backbone')
    assert cfg.model.architecture.type == (
        'CascadeRCNN' if 'cascade' in path else 'MaskRCNN')
    assert cfg.model.architecture.backbone.type == 'SwinTransformer'
    assert cfg.train_dataloader.batch_size == 1
    assert cfg.optim_wrapper.optimizer.lr == 5e-6
    assert cfg.param_scheduler == [] and cfg.train_cfg.max_epochs == 1


@pytest.mark.parametrize('name', [
    'gplq_mask-rcnn_swin-t-p4-w7_fpn_1x_coco_w4a4_full.py',
    'gplq_cascade-mask-rcnn_swin-t-p4-w7_fpn_ms-3x_coco_w4a4_full.py'
])
def test_real_detectors_convert(name):
    from gplq_mm.quant import QuantConv2d, QuantLinear
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'gplq_det', name))
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    kinds = {n.split('.')[0] for n, m in model.student.named_modules()
             if isinstance(m, (QuantConv2d, QuantLinear))}
    assert kinds == {'backbone', 'neck', 'rpn_head', 'roi_head'}
    if cfg.model.checkpoint is None:  # cascade: no official mmdet 3 weights
        with pytest.raises(ValueError, match='checkpoint is not set'):
            model.init_weights()
