"""Write scikit-learn's handwritten digits (real scans, 8x8, 1,797 images) as
an ImageNet-layout dataset: <out>/{train,val}/<digit>/<id>.png and
<out>/meta/{train,val}.txt ("relative/path label"). Fixed stratified split."""
import argparse
import os
import os.path as osp

import numpy as np
from PIL import Image


def make_digits(out: str, size: int = 32, val_fraction: float = 0.2,
                seed: int = 0) -> dict:
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.RandomState(seed)
    split = {}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == c))
        n_val = int(round(len(idx) * val_fraction))
        split.update({int(i): 'val' for i in idx[:n_val]})
        split.update({int(i): 'train' for i in idx[n_val:]})
    lines = {'train': [], 'val': []}
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        part = split[i]
        rel = f'{part}/{label}/{i:04d}.png'
        path = osp.join(out, rel)
        os.makedirs(osp.dirname(path), exist_ok=True)
        arr = (img / 16.0 * 255).astype(np.uint8)
        Image.fromarray(arr).resize((size, size), Image.BILINEAR).convert(
            'RGB').save(path)
        lines[part].append(f'{rel} {label}')
    os.makedirs(osp.join(out, 'meta'), exist_ok=True)
    for part, ls in lines.items():
        with open(osp.join(out, 'meta', f'{part}.txt'), 'w') as f:
            f.write('\n'.join(ls) + '\n')
    return {k: len(v) for k, v in lines.items()}


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--out', default='data/digits')
    p.add_argument('--size', type=int, default=32)
    args = p.parse_args()
    print(make_digits(args.out, args.size))
