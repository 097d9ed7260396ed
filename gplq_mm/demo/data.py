"""The demos' data, made from real scans that scikit-learn ships (no
download): its 1,797 handwritten digits (8x8), with one fixed stratified
train / val split.

* :func:`make_digits`: an ImageNet-layout classification set.
* :func:`make_digit_coco`: a COCO instance-segmentation set of black
  canvases with 1-3 non-overlapping upscaled digits each; a digit's mask is
  its stroke (pixels above half intensity, compressed RLE), its box the
  mask's extent. Train canvases use the train digits, val canvases the val
  digits.
"""
import json
import os
import os.path as osp

import numpy as np
from PIL import Image

__all__ = ['make_digits', 'make_digit_coco', 'write_image_set',
           'load_digits_uint8', 'stratified_split']


def stratified_split(labels, val_fraction, rng):
    """The fixed stratified split: ``(train indices, val indices)``."""
    val = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        val[idx[:int(round(len(idx) * val_fraction))]] = True
    return np.flatnonzero(~val), np.flatnonzero(val)


def write_image_set(out: str, images, labels, parts: dict,
                    size: int = 32) -> dict:
    """Gray images (``uint8``, any size) as an ImageNet-layout dataset:
    ``<out>/<part>/<label>/<id>.png`` (upscaled to ``size``, RGB) and
    ``<out>/meta/<part>.txt`` ("relative/path label") for each ``part``
    of ``parts`` (name -> indices). Returns the image count of each part."""
    lines = {}
    for part, idx in parts.items():
        lines[part] = []
        for i in idx:
            label = int(labels[i])
            rel = f'{part}/{label}/{int(i):04d}.png'
            path = osp.join(out, rel)
            os.makedirs(osp.dirname(path), exist_ok=True)
            Image.fromarray(images[i]).resize(
                (size, size), Image.BILINEAR).convert('RGB').save(path)
            lines[part].append(f'{rel} {label}')
    os.makedirs(osp.join(out, 'meta'), exist_ok=True)
    for part, ls in lines.items():
        with open(osp.join(out, 'meta', f'{part}.txt'), 'w') as f:
            f.write('\n'.join(ls) + '\n')
    return {k: len(v) for k, v in lines.items()}


def load_digits_uint8():
    """scikit-learn's 1,797 digits: ``(images (N, 8, 8) uint8, labels)``."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    return (digits.images / 16.0 * 255).astype(np.uint8), digits.target


def make_digits(out: str, size: int = 32, val_fraction: float = 0.2,
                seed: int = 0, classes=tuple(range(10)),
                parts=('train', 'val')) -> dict:
    """scikit-learn's digits of ``classes`` (relabelled 0, 1, ... in that
    order) as an ImageNet-layout dataset (:func:`write_image_set`), split
    into ``parts`` (train, held-out) with one fixed stratified split.
    Returns the image count of each split."""
    images, target = load_digits_uint8()
    keep = np.flatnonzero(np.isin(target, classes))
    labels = np.full(len(target), -1)
    labels[keep] = [list(classes).index(t) for t in target[keep]]
    train, val = stratified_split(labels[keep], val_fraction,
                        np.random.RandomState(seed))
    return write_image_set(out, images, labels,
                           dict(zip(parts, (keep[train], keep[val]))), size)


def make_digit_coco(out: str, n_train: int = 300, n_val: int = 100,
                    size: int = 128, digit_px=(28, 48), seed: int = 0):
    """Digit canvases as a COCO instance-segmentation set (see the module
    docstring); returns the image and instance counts of each split."""
    from pycocotools import mask as mask_utils
    glyphs, target = load_digits_uint8()
    rng = np.random.RandomState(seed)
    pools = dict(zip(('train', 'val'), stratified_split(target, 0.2, rng)))
    counts = {}
    for part, n_img in (('train', n_train), ('val', n_val)):
        os.makedirs(osp.join(out, part), exist_ok=True)
        images, anns = [], []
        for img_id in range(1, n_img + 1):
            canvas = np.zeros((size, size), np.uint8)
            taken = np.zeros((size, size), bool)
            for _ in range(rng.randint(1, 4)):
                i = int(rng.choice(pools[part]))
                s = int(rng.randint(digit_px[0], digit_px[1] + 1))
                glyph = np.asarray(Image.fromarray(glyphs[i]).resize(
                    (s, s), Image.BILINEAR))
                for _try in range(20):
                    y, x = rng.randint(0, size - s + 1, size=2)
                    if not taken[y:y + s, x:x + s].any():
                        break
                else:
                    continue
                taken[y:y + s, x:x + s] = True
                canvas[y:y + s, x:x + s] = glyph
                mask = np.zeros((size, size), np.uint8)
                mask[y:y + s, x:x + s] = glyph > 127
                if mask.sum() < 10:
                    continue
                rle = mask_utils.encode(np.asfortranarray(mask))
                rle['counts'] = rle['counts'].decode('ascii')
                ys, xs = np.nonzero(mask)
                x0, y0 = int(xs.min()), int(ys.min())
                w, h = int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1
                anns.append(dict(
                    id=len(anns) + 1, image_id=img_id,
                    category_id=int(target[i]) + 1, segmentation=rle,
                    area=float(mask.sum()), bbox=[x0, y0, w, h], iscrowd=0))
            name = f'{part}/{img_id:05d}.png'
            Image.fromarray(canvas).convert('RGB').save(osp.join(out, name))
            images.append(dict(id=img_id, file_name=name, width=size,
                               height=size))
        coco = dict(images=images, annotations=anns, categories=[
            dict(id=c + 1, name=str(c)) for c in range(10)])
        os.makedirs(osp.join(out, 'annotations'), exist_ok=True)
        with open(osp.join(out, 'annotations', f'instances_{part}.json'),
                  'w') as f:
            json.dump(coco, f)
        counts[part] = dict(images=len(images), instances=len(anns))
    return counts

