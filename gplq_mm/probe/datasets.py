"""AnnotationList: ``<img_name> <label>`` lists as an mmpretrain dataset, the
few-shot splits of NOAH (Zhang et al., 2022) as DTL (Fu et al., AAAI 2024)
lays them out.

DTL's ``data/fgfs.py`` reads NOAH's lists from
``<data_root>/few-shot_split/<dataset>/annotations/`` and the images from
``<data_root>/<dataset>/<img_name>``; NOAH ships the lists in its repository
(``data/few-shot/<dataset>/annotations/``) under these dataset names
(``standford-cars`` is NOAH's spelling)::

    <data_root>/
    ├── few-shot_split/<dataset>/annotations/
    │   ├── train_meta.list.num_shot_<k>.seed_<s>   # k: 1 2 4 8 16; s: 0 1 2
    │   ├── val_meta.list
    │   └── test_meta.list
    └── <dataset>/<img_name>              # food101/apple_pie/3277765.jpg

Each line is ``<img_name> <label>``, split on the last space (names may
hold spaces), labels from 0.
"""
from typing import List, Optional, Sequence, Union

from mmengine.fileio import exists, get_file_backend, list_from_file
from mmpretrain.datasets import CustomDataset
from mmpretrain.registry import DATASETS

__all__ = ['AnnotationList', 'NOAH_DATASETS', 'FEW_SHOT_LAYOUT',
           'few_shot_list', 'parse_line']

# NOAH's few-shot dataset names and their class counts (DTL's
# train_vit_few_shot.py); the images of each lie under <data_root>/<name>/.
NOAH_DATASETS = {'fgvc-aircraft': 100, 'food101': 101,
                 'oxford-flowers102': 102, 'oxford-pets': 37,
                 'standford-cars': 196}
SPLITS = ('train', 'val', 'test')
FEW_SHOT_LAYOUT = (
    '<data_root>/few-shot_split/<dataset>/annotations/'
    '{train_meta.list.num_shot_<k>.seed_<s>, val_meta.list, test_meta.list}'
    ' and the images at <data_root>/<dataset>/<img_name> (DTL\'s layout of '
    'NOAH\'s lists)')


def few_shot_list(dataset: str, split: str, num_shot: Optional[int] = None,
                  seed: int = 0) -> str:
    """The path of a NOAH list relative to the data root.

    >>> few_shot_list('food101', 'train', num_shot=16, seed=2)
    'few-shot_split/food101/annotations/train_meta.list.num_shot_16.seed_2'
    >>> few_shot_list('oxford-pets', 'test')
    'few-shot_split/oxford-pets/annotations/test_meta.list'
    """
    if split not in SPLITS:
        raise ValueError(f'AnnotationList.split={split!r}: use one of '
                         f'{", ".join(SPLITS)}')
    name = f'{split}_meta.list'
    if split == 'train':
        if not isinstance(num_shot, int) or num_shot < 1:
            raise ValueError(
                f'AnnotationList(split=train) needs num_shot, an int >= 1 '
                f'(NOAH: 1, 2, 4, 8, 16), not {num_shot!r}')
        name += f'.num_shot_{num_shot}.seed_{seed}'
    return f'few-shot_split/{dataset}/annotations/{name}'


def parse_line(line: str, where: str) -> Optional[tuple]:
    """``(img_name, label)`` of a list line, split on the last space;
    None for a blank line. ``where`` (``file:line``) names it in errors.

    >>> parse_line('cars_train/0 1.jpg 13', 'a.list:1')
    ('cars_train/0 1.jpg', 13)
    >>> parse_line('  ', 'a.list:2') is None
    True
    """
    line = line.strip()
    if not line:
        return None
    parts = line.rsplit(None, 1)
    try:
        if len(parts) != 2:
            raise ValueError
        return parts[0], int(parts[1])
    except ValueError:
        raise ValueError(f'{where}: {line!r} is not "<img_name> <label>" '
                         '(an integer label after the last space)') from None


@DATASETS.register_module()
class AnnotationList(CustomDataset):
    """Images and labels from a ``<img_name> <label>`` list (mmpretrain's
    :class:`CustomDataset` with an annotation file, plus the NOAH / DTL
    few-shot paths and errors that name the file and line).

    Either ``ann_file`` names the list (relative to ``data_root``), or
    ``dataset`` (with ``split``, and ``num_shot`` / ``seed`` for ``train``)
    builds NOAH's path (:func:`few_shot_list`); the images are then read
    from ``<data_root>/<dataset>/`` unless ``data_prefix`` says otherwise.

    Args:
        data_root (str): The root of the lists and images. Defaults to ''.
        ann_file (str): The list file. Defaults to '' (built from
            ``dataset``).
        dataset (str, optional): A dataset name of the few-shot layout:
            one of :data:`NOAH_DATASETS`, or a name of your own with
            ``num_classes`` or ``classes``. Defaults to None.
        split (str): ``'train'``, ``'val'`` or ``'test'``. Defaults to
            ``'train'``.
        num_shot (int, optional): Images per class of a train list.
            Defaults to None.
        seed (int): The seed of a train list. Defaults to 0.
        num_classes (int, optional): Labels must lie in
            ``[0, num_classes)``. Defaults to ``dataset``'s count, else to
            ``len(classes)``.
        classes (str | Sequence[str], optional): Class names, or a file of
            them (mmpretrain's ``classes``). Defaults to None.
        data_prefix (str | dict, optional): The image folder, relative to
            ``data_root``. Defaults to ``dataset`` (or '').
        **kwargs: Other arguments of :class:`CustomDataset` (``pipeline``,
            ``test_mode``, ...).
    """

    def __init__(self, data_root: str = '', ann_file: str = '',
                 dataset: Optional[str] = None, split: str = 'train',
                 num_shot: Optional[int] = None, seed: int = 0,
                 num_classes: Optional[int] = None,
                 classes: Union[str, Sequence[str], None] = None,
                 data_prefix: Union[str, dict, None] = None, **kwargs):
        self.num_classes = _num_classes(dataset, num_classes, classes,
                                        ann_file)
        self.dataset, self.split = dataset, split
        if not ann_file:
            if not dataset:
                raise ValueError('AnnotationList needs ann_file, or dataset '
                                 f'(the few-shot layout: {FEW_SHOT_LAYOUT})')
            ann_file = few_shot_list(dataset, split, num_shot, seed)
        if data_prefix is None:
            data_prefix = dataset or ''
        super().__init__(data_root=data_root, data_prefix=data_prefix,
                         ann_file=ann_file, with_label=True, classes=classes,
                         **kwargs)

    def load_data_list(self) -> List[dict]:
        """The samples of the list, checked line by line."""
        if not exists(self.ann_file):
            layout = FEW_SHOT_LAYOUT if self.dataset else \
                '"<img_name> <label>" lines'
            raise FileNotFoundError(
                f'AnnotationList: list file {self.ann_file!r} not found; '
                f'expected {layout}')
        n = self.num_classes
        if n is None and self.CLASSES is not None:
            n = len(self.CLASSES)
        backend = get_file_backend(self.img_prefix, enable_singleton=True)
        data_list = []
        for i, line in enumerate(list_from_file(self.ann_file), 1):
            sample = parse_line(line, f'{self.ann_file}:{i}')
            if sample is None:
                continue
            name, label = sample
            if label < 0 or (n is not None and label >= n):
                raise ValueError(
                    f'{self.ann_file}:{i}: label {label} is out of range '
                    f'for {n} classes (0..{n - 1})' if n is not None else
                    f'{self.ann_file}:{i}: label {label} is negative')
            data_list.append(dict(img_path=backend.join_path(
                self.img_prefix, name), gt_label=label))
        if not data_list:
            raise ValueError(f'AnnotationList: {self.ann_file!r} holds no '
                             '"<img_name> <label>" line')
        return data_list

    def extra_repr(self) -> List[str]:
        return super().extra_repr() + [f'Number of classes: \t'
                                       f'{self.num_classes}']


def _num_classes(dataset: Optional[str], num_classes: Optional[int],
                 classes, ann_file: str) -> Optional[int]:
    """The class count to check labels against (None: ``len(classes)``,
    known once mmpretrain has read them)."""
    if num_classes is not None and (not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ValueError(f'AnnotationList.num_classes={num_classes!r}: use '
                         'an int >= 1')
    known = NOAH_DATASETS.get(dataset)
    if known is not None and num_classes not in (None, known):
        raise ValueError(f'AnnotationList(dataset={dataset!r}): NOAH\'s '
                         f'{dataset} has {known} classes, not '
                         f'num_classes={num_classes}')
    if (isinstance(classes, (list, tuple)) and num_classes is not None
            and len(classes) != num_classes):
        raise ValueError(f'AnnotationList: {len(classes)} classes but '
                         f'num_classes={num_classes}')
    if num_classes is None and known is None and classes is None:
        if dataset and not ann_file:
            raise ValueError(
                f'AnnotationList(dataset={dataset!r}): not one of NOAH\'s '
                f'few-shot datasets ({", ".join(NOAH_DATASETS)}); for a list '
                'of your own give num_classes or classes')
        raise ValueError('AnnotationList needs num_classes or classes')
    return known if num_classes is None else num_classes
