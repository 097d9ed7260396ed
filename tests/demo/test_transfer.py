"""The transfer demo's data: downstream classes and images unseen upstream,
MNIST read with its label last, k-shot draws fixed and per class."""
import os.path as osp

import numpy as np
import torch

from gplq_mm.demo.transfer import (
    DOWNSTREAM,
    UPSTREAM,
    _to_digits_grid,
    kshot,
    load_mnist_5k,
    make_transfer_data,
)


def test_mnist_5k_is_read_label_last():
    images, labels = load_mnist_5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    # a digit's strokes, not a label column: the borders are empty
    assert images[:, 0, :].max() == 0 and images.max() == 255
    grid = _to_digits_grid(images[:3])
    assert grid.shape == (3, 8, 8) and (grid.max(axis=(1, 2)) == 255).all()


def test_kshot_draws_k_per_class_fixed():
    y = torch.arange(4).repeat_interleave(30)
    a, b = kshot(y, 4, 0), kshot(y, 4, 1)
    assert torch.bincount(y[a]).tolist() == [4] * 4
    assert torch.equal(a, kshot(y, 4, 0)) and not torch.equal(a, b)


def test_downstream_is_unseen_upstream(tmp_path):
    counts = make_transfer_data(str(tmp_path))
    assert not set(UPSTREAM) & set(DOWNSTREAM)

    def lines(name, part):
        with open(osp.join(tmp_path, name, 'meta', f'{part}.txt')) as f:
            return [ln.rsplit(' ', 1) for ln in f.read().splitlines()]

    up = lines('upstream', 'train') + lines('upstream', 'val')
    assert {int(c) for _, c in up} == set(range(len(UPSTREAM)))
    # the upstream images are digits 0-5 (file ids are scikit-learn's)
    from sklearn.datasets import load_digits
    target = load_digits().target
    ids = {int(osp.basename(p)[:-4]) for p, _ in up}
    assert set(target[sorted(ids)]) <= set(UPSTREAM)
    for name in ('digits', 'mnist'):
        train, test = lines(name, 'train'), lines(name, 'test')
        assert {int(c) for _, c in train + test} == set(range(4))
        assert not {p for p, _ in train} & {p for p, _ in test}
    digit_ids = {int(osp.basename(p)[:-4]) for p, _ in
                 lines('digits', 'train') + lines('digits', 'test')}
    assert not digit_ids & ids
    assert set(target[sorted(digit_ids)]) == set(DOWNSTREAM)
    assert counts['mnist'] == dict(train=1000, test=1000)
