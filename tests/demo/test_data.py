import json
import os.path as osp


def test_digits_split_is_fixed_and_stratified(digits_root):
    parts = {}
    for part in ('train', 'val'):
        with open(osp.join(digits_root, 'meta', f'{part}.txt')) as f:
            parts[part] = [line.split() for line in f.read().splitlines()]
    assert {k: len(v) for k, v in parts.items()} == {'train': 1438,
                                                     'val': 359}
    train = {p for p, _ in parts['train']}
    assert not train & {p for p, _ in parts['val']}
    for label in range(10):  # every class keeps about 20% for val
        n_val = sum(int(c) == label for _, c in parts['val'])
        n_all = n_val + sum(int(c) == label for _, c in parts['train'])
        assert abs(n_val - 0.2 * n_all) <= 0.5


def test_digit_coco_masks_and_boxes(digit_coco_root):
    with open(osp.join(digit_coco_root, 'annotations',
                       'instances_val.json')) as f:
        coco = json.load(f)
    assert len(coco['images']) == 4
    assert [c['name'] for c in coco['categories']] == [str(i)
                                                       for i in range(10)]
    from pycocotools import mask as mask_utils
    for ann in coco['annotations']:
        m = mask_utils.decode(ann['segmentation'])
        assert m.sum() == ann['area'] > 0
        x, y, w, h = ann['bbox']
        ys, xs = m.nonzero()
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == \
            (x, y, x + w, y + h)
