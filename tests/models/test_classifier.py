import copy

import pytest
import torch
from mmengine.registry import MODELS

import gplq_mm  # noqa: F401
from gplq_mm.quant import iter_quantizers
from gplq_mm.utils import mmengine_checkpoint_globals
from tests.helpers import ARCH


def _build(checkpoint=None, **kw):
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(dict(type='GPLQClassifier',
                                 architecture=copy.deepcopy(ARCH),
                                 checkpoint=checkpoint, **kw))


def _batch(n=4):
    from mmpretrain.structures import DataSample
    torch.manual_seed(0)
    x = torch.randn(n, 3, 16, 16)
    samples = [DataSample().set_gt_label(i % 10) for i in range(n)]
    return x, samples


def _stage1(fp_checkpoint):
    model = _build(fp_checkpoint)
    model.init_weights()
    x, _ = _batch(8)
    model.calibrate([dict(inputs=x)])
    model.prepare([dict(inputs=torch.randn(64, 3, 16, 16))])
    return model


def test_teacher_is_frozen_and_not_saved(fp_checkpoint):
    model = _stage1(fp_checkpoint)
    model.train()
    assert not model.teacher.training
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert not any(k.startswith('teacher') for k in model.state_dict())
    assert all(not n.startswith('teacher') for n, _ in
               model.named_parameters())
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, samples = _batch()
    losses = model.loss(x, samples)
    assert set(losses) == {'loss_cls', 'loss_pca'}
    sum(losses.values()).backward()
    opt.step()
    assert all(p.grad is None for p in model.teacher.parameters())
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the student did move
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in model.student.named_parameters()
               if n.endswith('weight'))


def test_stage1_fake_quantizes_no_weight(fp_checkpoint):
    model = _stage1(fp_checkpoint)
    assert model.stage == 1
    acts = [q for _, q in iter_quantizers(model.student, 'act')]
    weights = [q for _, q in iter_quantizers(model.student, 'weight')]
    assert acts and all(q.enabled for q in acts)
    assert weights and not any(q.enabled for q in weights)
    # The quantized layers see exactly their float weights.
    seen = []
    for mod in model.student.modules():
        if hasattr(mod, 'weight_quantizer'):
            w = mod.weight_quantizer(mod.weight)
            seen.append(torch.equal(w, mod.weight))
    assert seen and all(seen)
    model.train()
    x, samples = _batch()
    sum(model.loss(x, samples).values()).backward()
    assert all(q.step.grad is None for q in weights)
    assert all(q.step.grad is not None for q in acts)


def test_stage2_is_w4a4_and_reloads(fp_checkpoint):
    model = _stage1(fp_checkpoint)
    x, _ = _batch(64)  # enough images for QwT to keep a compensator
    r2 = model.weight_ptq([dict(inputs=x[i:i + 16]) for i in (0, 16, 32,
                                                               48)])
    assert model.stage == 2 and len(r2) == 2
    assert all(q.enabled for _, q in iter_quantizers(model.student))
    model.eval()
    out = model(x, mode='tensor')
    other = _build()  # test.py path: no FP checkpoint needed
    other.load_state_dict(model.state_dict(), strict=True)
    other.eval()
    assert other.stage == 2
    assert torch.equal(other(x, mode='tensor'), out)
    # on these images QwT keeps a compensator, and turning it off shows
    assert any(v > 0 for v in r2.values()), r2
    other.use_qwt = False
    other.apply_stage()
    assert not torch.equal(other(x, mode='tensor'), out)


def test_bad_architecture_is_named():
    with pytest.raises(TypeError, match='must build a classifier .*; it built '
                       'VisionTransformer'):
        from mmengine.registry import DefaultScope
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            MODELS.build(dict(type='GPLQClassifier',
                              architecture=copy.deepcopy(ARCH['backbone'])))


def test_missing_and_mismatched_checkpoints(tmp_path, fp_checkpoint):
    with pytest.raises(ValueError, match='checkpoint is not set'):
        _build().init_weights()
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        _build(str(tmp_path / 'nope.pth')).init_weights()
    model = _build(fp_checkpoint)
    with mmengine_checkpoint_globals():
        state = torch.load(fp_checkpoint)['state_dict']
    state['backbone.cls_token'] = torch.zeros(1, 1, 48)
    bad = tmp_path / 'bad.pth'
    torch.save({'state_dict': state}, bad)
    with pytest.raises(ValueError, match='does not match model.architecture'):
        _build(str(bad)).init_weights()
    model.init_weights()  # the real one loads strictly


@pytest.mark.parametrize('alpha', [-1, 'a', float('nan'), True])
def test_bad_alpha_is_refused(alpha):
    with pytest.raises(ValueError, match=f'alpha={alpha!r} is not allowed'):
        _build(alpha=alpha)


def test_images_with_other_channels_are_refused():
    with pytest.raises(ValueError, match='images have 1 channels but the '
                       'model takes 3'):
        _build().check_data(dict(inputs=torch.randn(2, 1, 16, 16)))
    _build().check_data(dict(inputs=torch.randn(2, 3, 16, 16)))


@pytest.mark.parametrize('tokens', ['all', 'first'])
def test_deit_distilled_pca_features(tokens):
    """DeiT-distilled's head consumes the class and the distillation token:
    L_PCA reads both, concatenated (``'all'``, default), or the class
    token alone (``'first'``)."""
    from mmengine.registry import DefaultScope
    arch = dict(
        type='ImageClassifier',
        backbone=dict(type='DistilledVisionTransformer',
                      arch=dict(embed_dims=32, num_layers=1, num_heads=2,
                                feedforward_channels=64),
                      img_size=16, patch_size=4),
        head=dict(type='DeiTClsHead', num_classes=10, in_channels=32))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(dict(type='GPLQClassifier', architecture=arch,
                                  pca_cfg=dict(tokens=tokens)))
    x = torch.randn(3, 3, 16, 16)
    cls_tok, dist_tok = model.teacher.head.pre_logits(
        model.teacher.extract_feat(x))
    f = model.teacher_features(x)
    want = torch.cat([cls_tok, dist_tok], -1) if tokens == 'all' else cls_tok
    assert model.pca.dim == want.shape[1] == (64 if tokens == 'all' else 32)
    assert torch.equal(f, want)


def test_bad_pca_tokens_are_refused():
    with pytest.raises(ValueError, match="pca_cfg.tokens='dist': use 'all' "
                       "or 'first'"):
        _build(pca_cfg=dict(tokens='dist'))
