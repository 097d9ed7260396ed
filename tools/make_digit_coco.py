"""Write a small COCO-format instance-segmentation dataset from real data:
scikit-learn's handwritten digits (8x8 scans) upscaled and pasted onto black
canvases, 1-3 non-overlapping digits per image; each digit's mask is its
stroke (pixels above half intensity), stored as compressed RLE; its box is
the mask's extent. Train canvases use the train digits and val canvases the
val digits of the fixed split of tools/make_digits.py.

Output: <out>/{train,val}/*.png and <out>/annotations/instances_{train,val}
.json, categories '0'..'9'.
"""
import argparse
import json
import os
import os.path as osp

import numpy as np
from PIL import Image


def _split(labels, val_fraction, rng):
    val = np.zeros(len(labels), bool)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        val[idx[:int(round(len(idx) * val_fraction))]] = True
    return np.flatnonzero(~val), np.flatnonzero(val)


def make_digit_coco(out: str, n_train: int = 300, n_val: int = 100,
                    size: int = 128, digit_px=(28, 48), seed: int = 0):
    from pycocotools import mask as mask_utils
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.RandomState(seed)
    pools = dict(zip(('train', 'val'), _split(digits.target, 0.2, rng)))
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
                glyph = np.asarray(Image.fromarray(
                    (digits.images[i] / 16 * 255).astype(np.uint8)).resize(
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
                    category_id=int(digits.target[i]) + 1, segmentation=rle,
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


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default='data/digit_coco')
    p.add_argument('--train', type=int, default=300)
    p.add_argument('--val', type=int, default=100)
    args = p.parse_args()
    print(make_digit_coco(args.out, args.train, args.val))
