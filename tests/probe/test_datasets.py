"""AnnotationList (NOAH / DTL few-shot lists), check_data_roots and the
shipped linear-probe configs."""
import glob
import os
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import PARAM_SCHEDULERS
from mmpretrain.registry import DATASETS
from PIL import Image

from gplq_mm.probe.datasets import (
    NOAH_DATASETS,
    AnnotationList,
    few_shot_list,
)
from gplq_mm.probe.preflight import LAYOUTS, check_data_roots

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PROBE = sorted(glob.glob(osp.join(ROOT, 'configs', 'probe', '*.py')))
PIPELINE = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]


def _image(path, size=(12, 10), color=(200, 30, 30)):
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.new('RGB', size, color).save(path)


def _write(path, text=''):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)


def _few_shot_tree(root, dataset='food101', lines=None,
                   name='train_meta.list.num_shot_2.seed_1'):
    """A DTL tree: the list under few-shot_split/, the images under
    <root>/<dataset>/."""
    lines = lines or ['apple_pie/1.jpg 0', 'apple pie/with space.jpg 0',
                      'baklava/2.jpg 2', '', 'waffles/3.jpg 100']
    for line in lines:
        if line.strip():
            _image(osp.join(root, dataset, line.rsplit(' ', 1)[0]))
    _write(osp.join(root, 'few-shot_split', dataset, 'annotations', name),
           '\n'.join(lines) + '\n')


# -- AnnotationList -----------------------------------------------------------
def test_few_shot_list_paths():
    assert few_shot_list('oxford-pets', 'train', 16, 2) == (
        'few-shot_split/oxford-pets/annotations/'
        'train_meta.list.num_shot_16.seed_2')
    assert few_shot_list('oxford-pets', 'val') == (
        'few-shot_split/oxford-pets/annotations/val_meta.list')
    assert few_shot_list('standford-cars', 'test', 8) == (
        'few-shot_split/standford-cars/annotations/test_meta.list')
    with pytest.raises(ValueError, match='needs num_shot'):
        few_shot_list('food101', 'train')
    with pytest.raises(ValueError, match="split='trainval'"):
        few_shot_list('food101', 'trainval')


def test_noah_names_and_class_counts():
    """NOAH's directory names (data/few-shot/<name> in its repository) and
    DTL's class counts."""
    assert NOAH_DATASETS == {'fgvc-aircraft': 100, 'food101': 101,
                             'oxford-flowers102': 102, 'oxford-pets': 37,
                             'standford-cars': 196}


def test_reads_a_few_shot_list_with_images(tmp_path):
    root = str(tmp_path)
    _few_shot_tree(root)
    ds = DATASETS.build(dict(type='AnnotationList', data_root=root,
                             dataset='food101', split='train', num_shot=2,
                             seed=1, pipeline=PIPELINE))
    assert isinstance(ds, AnnotationList) and ds.num_classes == 101
    assert len(ds) == 4  # the blank line is skipped
    infos = [ds.get_data_info(i) for i in range(len(ds))]
    img = osp.join(root, 'food101')
    assert [(i['img_path'], i['gt_label']) for i in infos] == [
        (osp.join(img, 'apple_pie/1.jpg'), 0),
        (osp.join(img, 'apple pie/with space.jpg'), 0),
        (osp.join(img, 'baklava/2.jpg'), 2),
        (osp.join(img, 'waffles/3.jpg'), 100)]
    sample = ds[1]
    assert tuple(sample['inputs'].shape) == (3, 10, 12)
    # the red image, as mmcv loads it (BGR; a JPEG: about the colour)
    assert [abs(int(c) - v) <= 3 for c, v in zip(
        sample['inputs'][:, 0, 0], (30, 30, 200))] == [True] * 3
    assert int(sample['data_samples'].gt_label) == 0


def test_explicit_ann_file_and_prefix(tmp_path):
    root = str(tmp_path)
    _image(osp.join(root, 'imgs', 'a b.png'))
    _write(osp.join(root, 'my.list'), 'a b.png 1\n')
    ds = AnnotationList(data_root=root, ann_file='my.list',
                        data_prefix='imgs', classes=['x', 'y'])
    assert ds.num_classes is None and len(ds.CLASSES) == 2
    assert ds.get_data_info(0)['img_path'] == osp.join(root, 'imgs', 'a b.png')
    assert ds.get_data_info(0)['gt_label'] == 1


def test_missing_list_names_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        AnnotationList(data_root=str(tmp_path), dataset='oxford-pets',
                       split='test')
    msg = str(e.value)
    assert '\n' not in msg
    assert osp.join(str(tmp_path), 'few-shot_split/oxford-pets/annotations/'
                    'test_meta.list') in msg
    assert '<data_root>/<dataset>/<img_name>' in msg


def test_malformed_line_names_file_and_line(tmp_path):
    root = str(tmp_path)
    _write(osp.join(root, 'l.list'), 'a.jpg 0\nb.jpg 1\nno_label.jpg\n')
    with pytest.raises(ValueError, match=r'l\.list:3: .*no_label\.jpg'):
        AnnotationList(data_root=root, ann_file='l.list', num_classes=2)
    _write(osp.join(root, 'l.list'), 'a.jpg 0\nb.jpg one\n')
    with pytest.raises(ValueError, match=r'l\.list:2: .*integer label'):
        AnnotationList(data_root=root, ann_file='l.list', num_classes=2)


def test_label_out_of_range(tmp_path):
    root = str(tmp_path)
    _write(osp.join(root, 'l.list'), 'a.jpg 0\nb.jpg 37\n')
    with pytest.raises(ValueError,
                       match=r'l\.list:2: label 37 is out of range for 37 '
                       r'classes \(0\.\.36\)'):
        AnnotationList(data_root=root, ann_file='l.list',
                       dataset='oxford-pets')
    _write(osp.join(root, 'l.list'), 'a.jpg -1\n')
    with pytest.raises(ValueError, match='l.list:1: label -1'):
        AnnotationList(data_root=root, ann_file='l.list', num_classes=3)
    # in range: no error
    _write(osp.join(root, 'l.list'), 'a.jpg 36\n')
    assert len(AnnotationList(data_root=root, ann_file='l.list',
                              dataset='oxford-pets')) == 1


def test_class_count_errors(tmp_path):
    with pytest.raises(ValueError, match="oxford-pets has 37 classes, not "
                       'num_classes=100'):
        AnnotationList(dataset='oxford-pets', split='val', num_classes=100)
    with pytest.raises(ValueError, match="not one of NOAH's few-shot "
                       'datasets.*food101'):
        AnnotationList(dataset='food-101', split='val')
    with pytest.raises(ValueError, match='needs num_classes or classes'):
        AnnotationList(ann_file='x.list')
    with pytest.raises(ValueError, match='needs ann_file, or dataset'):
        AnnotationList(num_classes=3)


# -- check_data_roots ---------------------------------------------------------
def _cfg(*datasets, loader='train'):
    return Config({f'{loader}_dataloader': dict(batch_size=2, dataset=d)
                   for d in datasets})


def _tree(root, paths):
    for p in paths:
        if p.endswith('/'):
            os.makedirs(osp.join(root, p), exist_ok=True)
        else:
            _write(osp.join(root, p))


# a split of each class and what mmpretrain reads for it
SPLIT_FILES = {
    'FGVCAircraft': ('test', ['data/images/', 'data/images_variant_test.txt']),
    'Food101': ('train', ['images/', 'meta/train.txt']),
    'Flowers102': ('trainval', ['jpg/', 'imagelabels.mat', 'setid.mat']),
    'OxfordIIITPet': ('test', ['images/', 'annotations/test.txt']),
    'StanfordCars': ('train', ['cars_train/', 'devkit/cars_train_annos.mat']),
}
LAYOUT_WORDS = {'FGVCAircraft': 'fgvc-aircraft-2013b/data/{images/',
                'Food101': 'food-101/{images/', 'Flowers102': 'jpg/',
                'OxfordIIITPet': 'annotations/trainval.txt',
                'StanfordCars': 'cars_annos.mat'}


def test_layout_table_covers_the_five_classes():
    assert set(LAYOUTS) == set(SPLIT_FILES)


@pytest.mark.parametrize('name', sorted(SPLIT_FILES))
def test_missing_root_is_refused_with_the_layout(name, tmp_path):
    split, _ = SPLIT_FILES[name]
    root = str(tmp_path / 'nowhere')
    with pytest.raises(ValueError) as e:
        check_data_roots(_cfg(dict(type=name, data_root=root, split=split)))
    msg = str(e.value)
    assert '\n' not in msg
    assert msg.startswith(f'train_dataloader: {name} data_root {root!r} '
                          'not found')
    assert LAYOUT_WORDS[name] in msg


@pytest.mark.parametrize('name', sorted(SPLIT_FILES))
def test_laid_out_tree_is_accepted_and_a_missing_file_named(name, tmp_path):
    split, paths = SPLIT_FILES[name]
    root = str(tmp_path)
    _tree(root, paths)
    cfg = _cfg(dict(type=f'mmpretrain.{name}', data_root=root, split=split))
    check_data_roots(cfg)
    os.remove(osp.join(root, paths[-1]))
    with pytest.raises(ValueError, match=f'misses (.* or )?{paths[-1]}; '
                       f"mmpretrain's {name} expects"):
        check_data_roots(cfg)


def test_default_split_and_bad_split(tmp_path):
    root = str(tmp_path)
    _tree(root, ['data/images/', 'data/images_variant_trainval.txt'])
    check_data_roots(_cfg(dict(type='FGVCAircraft', data_root=root)))
    _tree(root, ['images/', 'meta/train.txt', 'meta/test.txt'])
    with pytest.raises(ValueError, match="Food101 split='val': use one of "
                       'train, test'):
        check_data_roots(_cfg(dict(type='Food101', data_root=root,
                                   split='val')))


def test_stanford_cars_either_layout(tmp_path):
    root = str(tmp_path)
    cfg = _cfg(dict(type='StanfordCars', data_root=root, split='test'))
    with pytest.raises(ValueError, match='misses car_ims/, cars_annos.mat or '
                       'cars_test/, devkit/cars_test_annos_withlabels.mat'):
        check_data_roots(cfg)
    _tree(root, ['car_ims/', 'cars_annos.mat'])
    check_data_roots(cfg)


def test_every_loader_and_wrappers_are_checked(tmp_path):
    root = str(tmp_path)
    _tree(root, ['images/', 'meta/train.txt'])
    ok = dict(type='Food101', data_root=root, split='train')
    bad = dict(type='Food101', data_root=root, split='test')
    cfg = Config(dict(
        train_dataloader=dict(dataset=dict(type='RepeatDataset', times=2,
                                           dataset=ok)),
        val_dataloader=dict(dataset=dict(type='ConcatDataset',
                                         datasets=[ok, bad])),
        test_dataloader=None))
    with pytest.raises(ValueError, match='^val_dataloader: .*meta/test.txt'):
        check_data_roots(cfg)
    check_data_roots(cfg, loaders=('train', 'test'))


def test_other_datasets_and_remote_roots_are_left_alone(tmp_path):
    check_data_roots(_cfg(dict(type='ImageNet', data_root='/no/such/dir'),
                          dict(type='CustomDataset', data_root='/no/such')))
    check_data_roots(_cfg(dict(type='Food101', data_root='s3://b/food-101')))


def test_annotation_list_preflight(tmp_path):
    root = str(tmp_path)
    ds = dict(type='AnnotationList', data_root=root, dataset='food101',
              split='train', num_shot=2, seed=1)
    with pytest.raises(ValueError, match='list file .*few-shot_split/food101/'
                       'annotations/train_meta.list.num_shot_2.seed_1.* not '
                       'found; expected <data_root>/few-shot_split'):
        check_data_roots(_cfg(ds))
    _few_shot_tree(root)
    check_data_roots(_cfg(ds))
    # NOAH's own code reads <root>/images/...; DTL's layout is named
    os.remove(osp.join(root, 'food101', 'apple_pie', '1.jpg'))
    with pytest.raises(ValueError, match=r'seed_1:1 names .*apple_pie/1\.jpg'
                       '.* which is missing'):
        check_data_roots(_cfg(ds))
    with pytest.raises(ValueError, match="data_root '/no/where' not found"):
        check_data_roots(_cfg(dict(ds, data_root='/no/where')))
    with pytest.raises(ValueError, match='needs num_shot'):
        check_data_roots(_cfg(dict(ds, num_shot=None)))


# -- the configs --------------------------------------------------------------
EXPECTED = {  # config -> (dataset class, train split, classes)
    'linear-probe_fgvc-aircraft.py': ('FGVCAircraft', 'trainval', 100),
    'linear-probe_food-101.py': ('Food101', 'train', 101),
    'linear-probe_flowers-102.py': ('Flowers102', 'trainval', 102),
    'linear-probe_oxford-pets.py': ('OxfordIIITPet', 'trainval', 37),
    'linear-probe_stanford-cars.py': ('StanfordCars', 'train', 196),
    'linear-probe_fewshot-16shot.py': ('AnnotationList', 'train', 100),
}


def test_every_probe_config_is_listed():
    assert sorted(osp.basename(p) for p in PROBE) == sorted(EXPECTED)


@pytest.mark.parametrize('path', PROBE, ids=osp.basename)
def test_probe_config_has_the_protocol(path):
    cfg = Config.fromfile(path)
    cls, split, n = EXPECTED[osp.basename(path)]
    assert cfg.model.type == 'LinearProbe' and cfg.model.num_classes == n
    assert cfg.model.checkpoint is None and not cfg.model.internal_fp32
    # the normalization is the source's (LinearProbe merges these keys)
    assert cfg.data_preprocessor == dict(num_classes=n)
    assert cfg.train_cfg == dict(type='LinearProbeLoop', max_epochs=100,
                                 mode='features', val_interval=100)
    assert cfg.train_dataloader.batch_size == 64
    for name in ('train', 'val', 'test'):
        ds = cfg[f'{name}_dataloader'].dataset
        assert ds.type == cls
    assert cfg.train_dataloader.dataset.split == split
    assert cfg.test_dataloader.dataset.split == 'test'
    assert [t['type'] for t in cfg.train_dataloader.dataset.pipeline] == [
        'LoadImageFromFile', 'RandomResizedCrop', 'RandomFlip', 'PackInputs']
    test = cfg.test_dataloader.dataset.pipeline
    assert [t['type'] for t in test] == [
        'LoadImageFromFile', 'ResizeEdge', 'CenterCrop', 'PackInputs']
    assert (test[1]['scale'], test[1]['edge'], test[1]['interpolation'],
            test[2]['crop_size']) == (256, 'short', 'bicubic', 224)
    assert cfg.default_scope == 'mmpretrain'
    assert cfg.custom_imports.imports == ['gplq_mm']
    assert cfg.randomness.seed == 0
    ckpt = cfg.default_hooks.checkpoint
    assert (ckpt.interval, ckpt.max_keep_ckpts, ckpt.by_epoch) == (10, 1, True)
    # AdamW at 1e-3, weight decay 0.05 on weights and none on biases (DTL)
    optim = build_optim_wrapper(nn.Linear(4, 3), cfg.optim_wrapper)
    assert type(optim.optimizer) is torch.optim.AdamW
    assert sorted((g['lr'], g['weight_decay'], g['params'][0].dim())
                  for g in optim.optimizer.param_groups) == [
                      (1e-3, 0.0, 1), (1e-3, 0.05, 2)]


def test_probe_schedule_warms_up_then_decays_to_zero():
    """10 epochs from 1e-7 to 1e-3, then cosine to 0 at epoch 100, per
    iteration."""
    cfg = Config.fromfile(PROBE[0])
    opt = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=1e-3)
    per_epoch, scheds = 3, []
    for s in cfg.param_scheduler:  # as mmengine's runner builds them
        assert s['convert_to_iter_based'] and s['by_epoch']
        cls = PARAM_SCHEDULERS.get(s['type'])
        kwargs = {k: v for k, v in s.items()
                  if k not in ('type', 'convert_to_iter_based')}
        scheds.append(cls.build_iter_from_epoch(opt, epoch_length=per_epoch,
                                                **kwargs))
    lrs = []
    for _ in range(100 * per_epoch):
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        for s in scheds:
            s.step()
    assert lrs[0] == pytest.approx(1e-7)
    assert lrs[10 * per_epoch] == pytest.approx(1e-3)
    assert max(lrs) == pytest.approx(1e-3)
    assert lrs[55 * per_epoch] == pytest.approx(0.5e-3, rel=1e-3)
    assert lrs[-1] < 1e-6 and lrs == lrs[:30] + sorted(lrs[30:],
                                                       reverse=True)


def test_probe_configs_are_preflighted(tmp_path):
    """Without data, the shipped configs stop at the check, naming the
    layout."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs/probe/'
                                   'linear-probe_flowers-102.py'))
    for name in ('train', 'val', 'test'):
        cfg[f'{name}_dataloader'].dataset.data_root = str(tmp_path / 'x')
    with pytest.raises(ValueError, match='Flowers102/{jpg/'):
        check_data_roots(cfg)
