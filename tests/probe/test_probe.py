"""LinearProbe and LinearProbeLoop on tiny models: the backbone stays frozen,
cached features are the backbone's and are keyed by what they depend on,
and bad input is refused before any work."""
import os
import os.path as osp
import shutil

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope
from mmengine.runner import Runner

import gplq_mm  # noqa: F401
from gplq_mm.probe import (
    PROTOCOL,
    accuracy,
    extract_features,
    feature_key,
    fit_linear,
)
from tests.helpers import ARCH, fp_cfg, gplq_cfg, load_ckpt


@pytest.fixture(scope='module')
def source(digits_root, tmp_path_factory):
    """The tiny float ViT's config as a file (a probe's ``source``)."""
    path = str(tmp_path_factory.mktemp('src') / 'fp.py')
    fp_cfg(digits_root, 'unused').dump(path)
    return path


@pytest.fixture(scope='module')
def gplq_run(digits_root, fp_checkpoint, tmp_path_factory):
    """A tiny GPLQ run: its Stage-1 and W4A4 checkpoints."""
    work = str(tmp_path_factory.mktemp('gplq'))
    cfg = gplq_cfg(digits_root, work, fp_checkpoint)
    Runner.from_cfg(cfg).train()
    return work


def probe_cfg(digits_root, source, checkpoint, work_dir, mode='features',
              epochs=2, **model_kw):
    cfg = fp_cfg(digits_root, work_dir, train_images=48, max_epochs=epochs)
    cfg.custom_imports = dict(imports=['gplq_mm'])
    cfg.model = dict(type='LinearProbe', source=source,
                     checkpoint=checkpoint, num_classes=10, **model_kw)
    cfg.train_cfg = dict(type='LinearProbeLoop', max_epochs=epochs,
                         mode=mode, val_interval=epochs)
    cfg.optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-2,
                                            weight_decay=0.05))
    return cfg


def _backbone_state(model):
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


@pytest.mark.parametrize('mode', ['features', 'online'])
def test_backbone_is_unchanged_tensor_for_tensor(
        digits_root, source, gplq_run, tmp_path, mode):
    ckpt = osp.join(gplq_run, 'gplq_w4a4.pth')
    runner = Runner.from_cfg(probe_cfg(digits_root, source, ckpt,
                                       str(tmp_path), mode))
    model = runner.model
    assert model.backbone.model.stage == 2  # W4A4, as saved
    before = _backbone_state(model)
    head = model.head.weight.detach().clone()
    runner.train()
    after = model.backbone.state_dict()
    assert before.keys() == after.keys() and len(before) > 50
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert not torch.equal(head, model.head.weight)  # the head trained
    assert not model.backbone.training  # eval mode, whatever train() said
    assert all(not p.requires_grad for p in model.backbone.parameters())


def test_cached_features_are_the_backbones(digits_root, source, gplq_run,
                                           tmp_path):
    ckpt = osp.join(gplq_run, 'gplq_w4a4.pth')
    runner = Runner.from_cfg(probe_cfg(digits_root, source, ckpt,
                                       str(tmp_path), epochs=1))
    runner.train()
    files = os.listdir(tmp_path / 'features')
    assert len(files) == 1 and files[0].endswith('.pt')
    cached = torch.load(tmp_path / 'features' / files[0], weights_only=True)
    # the frozen backbone, now, on the same images through the test pipeline
    loader = Runner.build_dataloader(runner.train_loop.feature_loader_cfg)
    online, labels = extract_features(runner.model, loader)
    assert torch.equal(cached['features'], online)
    assert torch.equal(cached['labels'], labels)
    assert cached['features'].shape == (48, 32)
    # a second run reuses them
    runner2 = Runner.from_cfg(probe_cfg(digits_root, source, ckpt,
                                        str(tmp_path), epochs=1))
    runner2.train_loop.features()
    assert os.listdir(tmp_path / 'features') == files


def test_cache_key_follows_checkpoint_content(digits_root, source, gplq_run,
                                              tmp_path):
    ckpt = osp.join(gplq_run, 'gplq_w4a4.pth')
    copy = str(tmp_path / 'copy.pth')
    shutil.copy(ckpt, copy)
    changed = str(tmp_path / 'changed.pth')
    state = load_ckpt(ckpt)
    key = next(k for k in state['state_dict'] if k.endswith('qkv.weight'))
    state['state_dict'][key] = state['state_dict'][key] + 1e-3
    torch.save(state, changed)
    ds = dict(type='CustomDataset', ann_file='meta/train.txt')
    keys = {}
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        for name, path in (('orig', ckpt), ('copy', copy),
                           ('changed', changed)):
            model = MODELS.build(dict(type='LinearProbe', source=source,
                                      checkpoint=path, num_classes=10))
            keys[name] = feature_key(model, ds)
        keys['pipeline'] = feature_key(model, dict(ds, pipeline=[]))
        model = MODELS.build(dict(type='LinearProbe', source=source,
                                  checkpoint=ckpt, num_classes=10,
                                  internal_fp32=True))
        keys['internal'] = feature_key(model, ds)
    assert keys['orig'] == keys['copy']  # content, not path
    assert len({keys[k] for k in ('orig', 'changed', 'pipeline',
                                  'internal')}) == 4


def test_probe_of_separable_features_reaches_100():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 16, generator=g) * 4
    y = torch.arange(5).repeat_interleave(400)
    x = centers[y] + 0.3 * torch.randn(len(y), 16, generator=g)
    head = fit_linear(x[::2], y[::2], 5)  # the protocol: 1,600 steps
    assert accuracy(head, x[1::2], y[1::2]) == 100.0
    # 100 epochs of 20 images are 100 steps, too few; min_iters makes more
    few = torch.cat([torch.nonzero(y == c)[:4, 0] for c in range(5)])
    assert accuracy(fit_linear(x[few], y[few], 5), x, y) < 100
    assert accuracy(fit_linear(x[few], y[few], 5, min_iters=1000), x,
                    y) == 100.0
    # and about chance on labels that carry nothing
    noise = torch.randint(0, 5, (len(y), ), generator=g)
    assert accuracy(fit_linear(x[::2], noise[::2], 5), x[1::2],
                    noise[1::2]) < 30


def test_fit_linear_schedule_is_the_configs():
    from gplq_mm.probe.fit import lr_at
    cfg = Config.fromfile('configs/probe/_base_/probe_runtime.py')
    assert cfg.train_cfg.max_epochs == PROTOCOL['epochs']
    assert cfg.optim_wrapper.optimizer.lr == PROTOCOL['lr']
    assert cfg.optim_wrapper.optimizer.weight_decay == \
        PROTOCOL['weight_decay']
    assert cfg.train_dataloader.batch_size == PROTOCOL['batch_size']
    warm, cos = cfg.param_scheduler
    assert warm.end == PROTOCOL['warmup_epochs'] == cos.begin
    assert warm.start_factor == PROTOCOL['warmup_start_factor']
    assert cos.get('eta_min', 0) == 0
    assert cfg.optim_wrapper.paramwise_cfg.bias_decay_mult == 0
    assert lr_at(0, 100, 10, 1.0, 1e-4) == 1e-4
    assert lr_at(10, 100, 10, 1.0, 1e-4) == 1.0
    assert abs(lr_at(55, 100, 10, 1.0, 1e-4) - 0.5) < 1e-12


def test_gplq_checkpoint_rebuilds_its_method(source, gplq_run):
    """One source config (here the float host's) serves Stage 1 and W4A4:
    the checkpoint's signature rebuilds the GPLQ model; internal FP32 is the
    same latent weights with every quantizer off."""
    x = torch.randn(4, 3, 16, 16)
    feats = {}
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        for name, ckpt, kw in (
                ('stage1', 'gplq_stage1.pth', {}),
                ('w4a4', 'gplq_w4a4.pth', {}),
                ('internal', 'gplq_w4a4.pth', dict(internal_fp32=True))):
            m = MODELS.build(dict(type='LinearProbe', source=source,
                                  checkpoint=osp.join(gplq_run, ckpt),
                                  num_classes=3, **kw))
            feats[name] = m.features(x)
            if name != 'internal':
                assert m.backbone.model.stage == (1 if name == 'stage1'
                                                  else 2)
    assert not torch.equal(feats['stage1'], feats['w4a4'])
    assert not torch.equal(feats['w4a4'], feats['internal'])


def test_refusals_name_the_problem(digits_root, source, fp_checkpoint,
                                   tmp_path):
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        def build(ckpt, **kw):
            return MODELS.build(dict(type='LinearProbe', source=source,
                                     checkpoint=ckpt, num_classes=3, **kw))

        with pytest.raises(ValueError, match='in_channels=48 .* 32-wide'):
            build(fp_checkpoint, in_channels=48)
        head_only = str(tmp_path / 'head.pth')
        state = load_ckpt(fp_checkpoint)['state_dict']
        torch.save(dict(state_dict={k: v for k, v in state.items()
                                    if k.startswith('head.')}), head_only)
        with pytest.raises(ValueError, match='has no backbone'):
            build(head_only)
        other = dict(ARCH, backbone=dict(ARCH['backbone'], arch=dict(
            embed_dims=48, num_layers=2, num_heads=2,
            feedforward_channels=64)))
        wide = MODELS.build(other)
        wide_ckpt = str(tmp_path / 'wide.pth')
        torch.save(dict(state_dict=wide.state_dict()), wide_ckpt)
        with pytest.raises(ValueError, match='does not fit the architecture'):
            build(wide_ckpt)
        with pytest.raises(FileNotFoundError, match='does not exist'):
            build(str(tmp_path / 'missing.pth'))


def test_probe_tool_checks_every_dataset_first(source, fp_checkpoint,
                                               tmp_path):
    """tools/probe.py stops before any work when a dataset root is missing,
    naming the layout mmpretrain expects."""
    import subprocess
    import sys
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    proc = subprocess.run(
        [sys.executable, 'tools/probe.py', source, fp_checkpoint,
         '--work-dir', str(tmp_path / 'probe')], cwd=root,
        capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: train_dataloader: FGVCAircraft data_root "
        "'data/fgvc-aircraft-2013b' not found"), proc.stderr
    assert not (tmp_path / 'probe').exists()
