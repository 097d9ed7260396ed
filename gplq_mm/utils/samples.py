"""Predictions written the way mmpretrain's heads write them."""
from typing import List, Optional

import torch

__all__ = ['set_cls_predictions']


def set_cls_predictions(logits: torch.Tensor,
                        data_samples: Optional[List] = None) -> List:
    """``data_samples`` (new ones when None) with ``pred_score`` = softmax of
    ``logits`` and ``pred_label``, as mmpretrain's ClsHead.predict sets
    them, so the config's metric measures any model like the host's."""
    from mmpretrain.structures import DataSample
    scores = logits.softmax(dim=1)
    labels = scores.argmax(dim=1, keepdim=True)
    if data_samples is None:
        data_samples = [DataSample() for _ in range(len(scores))]
    for sample, score, label in zip(data_samples, scores, labels):
        sample.set_pred_score(score).set_pred_label(label)
    return data_samples
