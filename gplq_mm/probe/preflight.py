"""check_data_roots: one line naming a missing dataset file, before any work.

mmpretrain's fine-grained datasets fail deep in a run when their folder is
missing or laid out otherwise (an ``AssertionError`` from ``mat4py``, a
``FileNotFoundError`` of one image, or, for ``StanfordCars``, a message
without the path). :func:`check_data_roots` looks at every dataloader of a
config first and names the file and the layout the class expects. Only the
classes in :data:`LAYOUTS` and :class:`~gplq_mm.probe.datasets.AnnotationList`
are checked; data roots on remote storage (``s3://...``) are not.
"""
import os.path as osp
from typing import Iterator, Optional, Sequence

from .datasets import FEW_SHOT_LAYOUT, few_shot_list, parse_line

__all__ = ['check_data_roots', 'LAYOUTS']

LOADERS = ('train', 'val', 'test')


def _each(splits: Sequence[str], *paths: str) -> dict:
    return {s: (tuple(p.format(split=s) for p in paths), ) for s in splits}


# What each class reads under its data_root (mmpretrain 1.2.0's code; a
# trailing '/' marks a folder): class -> (default split, {split: the
# alternative sets of paths, one of which must be complete}, the layout as
# the class's docstring draws it).
LAYOUTS = {
    'FGVCAircraft': (
        'trainval',
        _each(('train', 'val', 'trainval', 'test'), 'data/images/',
              'data/images_variant_{split}.txt'),
        'fgvc-aircraft-2013b/data/{images/, images_variant_train.txt, '
        'images_variant_val.txt, images_variant_trainval.txt, '
        'images_variant_test.txt}'),
    'Food101': (
        'train', _each(('train', 'test'), 'images/', 'meta/{split}.txt'),
        'food-101/{images/<class>/<id>.jpg, meta/train.txt, meta/test.txt}'),
    'Flowers102': (
        'trainval',
        _each(('train', 'val', 'trainval', 'test'), 'jpg/',
              'imagelabels.mat', 'setid.mat'),
        'Flowers102/{jpg/image_<n>.jpg, imagelabels.mat, setid.mat}'),
    'OxfordIIITPet': (
        'trainval',
        _each(('trainval', 'test'), 'images/', 'annotations/{split}.txt'),
        'Oxford-IIIT_Pets/{images/, annotations/trainval.txt, '
        'annotations/test.txt}'),
    # the code reads devkit/cars_test_annos_withlabels.mat (its docstring
    # spells it cars_test_annoswithlabels.mat)
    'StanfordCars': (
        'train',
        {'train': (('car_ims/', 'cars_annos.mat'),
                   ('cars_train/', 'devkit/cars_train_annos.mat')),
         'test': (('car_ims/', 'cars_annos.mat'),
                  ('cars_test/', 'devkit/cars_test_annos_withlabels.mat'))},
        'Stanford_Cars/{car_ims/, cars_annos.mat} or Stanford_Cars/'
        '{cars_train/, cars_test/, devkit/cars_train_annos.mat, '
        'devkit/cars_test_annos_withlabels.mat}'),
}
_LIST = 'AnnotationList'


def _type_name(t) -> str:
    """``'mmpretrain.Food101'`` or the class itself -> ``'Food101'``."""
    return getattr(t, '__name__', str(t)).rsplit('.', 1)[-1]


def _datasets(cfg) -> Iterator[dict]:
    """``cfg`` and the datasets inside wrappers (``dataset`` of
    RepeatDataset / ClassBalancedDataset, ``datasets`` of ConcatDataset)."""
    if not hasattr(cfg, 'get'):
        return
    yield cfg
    yield from _datasets(cfg.get('dataset'))  # AnnotationList's is a str
    for d in cfg.get('datasets') or ():
        yield from _datasets(d)


def _missing(root: str, paths: Sequence[str]) -> list:
    return [p for p in paths
            if not (osp.isdir if p.endswith('/') else osp.isfile)(
                osp.join(root, p))]


def _check_layout(where: str, name: str, ds) -> Optional[str]:
    default_split, needs, layout = LAYOUTS[name]
    split = ds.get('split', default_split)
    if split not in needs:
        return (f'{where}: {name} split={split!r}: use one of '
                f'{", ".join(needs)}')
    root = ds['data_root']
    missing = [_missing(root, alt) for alt in needs[split]]
    if all(missing):
        return (f'{where}: {name} (split {split!r}) under {root!r} misses '
                + ' or '.join(', '.join(m) for m in missing)
                + f'; mmpretrain\'s {name} expects {layout}')
    return None


def _join(root: str, path: str) -> str:
    return path if osp.isabs(path) or not root else osp.join(root, path)


def _check_list(where: str, ds) -> Optional[str]:
    root, dataset = ds.get('data_root', ''), ds.get('dataset')
    ann = ds.get('ann_file', '')
    layout = FEW_SHOT_LAYOUT if dataset else '"<img_name> <label>" lines'
    if not ann:
        if not dataset:
            return f'{where}: AnnotationList needs ann_file or dataset'
        try:
            ann = few_shot_list(dataset, ds.get('split', 'train'),
                                ds.get('num_shot'), ds.get('seed', 0))
        except ValueError as e:
            return f'{where}: {e}'
    ann = _join(root, ann)
    if not osp.isfile(ann):
        return f'{where}: list file {ann!r} not found; expected {layout}'
    prefix = ds.get('data_prefix')
    if prefix is None:
        prefix = dataset or ''
    if isinstance(prefix, dict):
        prefix = prefix.get('img_path', '')
    images = _join(root, prefix)
    with open(ann) as f:
        for i, line in enumerate(f, 1):
            try:
                sample = parse_line(line, f'{ann}:{i}')
            except ValueError as e:
                return f'{where}: {e}'
            if sample is not None:
                img = osp.join(images, sample[0])
                if not osp.isfile(img):
                    return (f'{where}: {ann}:{i} names {img!r}, which is '
                            f'missing; expected {layout}')
                break
    return None


def _problem(where: str, ds) -> Optional[str]:
    name = _type_name(ds.get('type', ''))
    if name not in LAYOUTS and name != _LIST:
        return None
    root = ds.get('data_root', '')
    if '://' in str(root):
        return None
    if name in LAYOUTS and not root:
        return (f'{where}: {name} needs data_root; mmpretrain\'s {name} '
                f'expects {LAYOUTS[name][2]}')
    if root and not osp.isdir(root):
        expects = (f"mmpretrain's {name} expects {LAYOUTS[name][2]}"
                   if name in LAYOUTS else f'expected {FEW_SHOT_LAYOUT}')
        return f'{where}: {name} data_root {root!r} not found; {expects}'
    if name == _LIST:
        return _check_list(where, ds)
    return _check_layout(where, name, ds)


def check_data_roots(cfg, loaders: Sequence[str] = LOADERS) -> None:
    """Raise ValueError, one line, when a dataset of ``cfg`` (an mmengine
    Config) lacks its data root or a file its class reads.

    Args:
        cfg (Config): The run's config.
        loaders (Sequence[str]): Which ``<name>_dataloader`` to check.
            Defaults to ``('train', 'val', 'test')``.
    """
    for loader in loaders:
        where = f'{loader}_dataloader'
        dl = cfg.get(where)
        if not hasattr(dl, 'get'):
            continue
        for ds in _datasets(dl.get('dataset')):
            problem = _problem(where, ds)
            if problem:
                raise ValueError(problem)

