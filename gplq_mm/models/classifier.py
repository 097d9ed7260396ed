"""GPLQ for mmpretrain image classifiers."""
import math
from typing import Dict, Iterable, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.registry import MODELS

from ..quant.hosts import head_feature_dim
from .base import GPLQModel
from .pca import PCAProjector

__all__ = ['GPLQClassifier']


class _Logits(nn.Module):

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x, mode='tensor')


@MODELS.register_module()
class GPLQClassifier(GPLQModel):
    """GPLQ for an mmpretrain image classifier.

    Stage-1 loss: the head's task loss (``loss_cls``) plus
    ``alpha * L_PCA`` (``loss_pca``) between the student's and the frozen
    teacher's penultimate features (the pre-logits the head consumes).

    Args:
        alpha (float): Weight of L_PCA; 0 disables it. Defaults to 1.0.
        pca_cfg (dict): ``threshold`` (explained-variance ratio, 0.6) and
            ``multiple`` (32) for the kept dimension; ``tokens`` for a head
            that consumes several tokens (DeiT-distilled: class and
            distillation token): ``'all'`` (default) concatenates them, the
            feature the classifier's last layer reads, its logits being the
            mean of both tokens' heads; ``'first'`` takes the class token
            alone. Single-token heads are the same either way.
        **kwargs: See :class:`GPLQModel`.
    """
    task = 'classifier'

    def __init__(self, *args, alpha: float = 1.0,
                 pca_cfg: Optional[dict] = None, **kwargs):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) \
                or not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f'GPLQClassifier.alpha={alpha!r} is not '
                             'allowed: use a finite number >= 0 (0 turns '
                             'L_PCA off)')
        pca_cfg = dict(pca_cfg or {})
        self.pca_tokens = pca_cfg.pop('tokens', 'all')
        if self.pca_tokens not in ('all', 'first'):
            raise ValueError(f'GPLQClassifier.pca_cfg.tokens='
                             f"{self.pca_tokens!r}: use 'all' or 'first'")
        super().__init__(*args, **kwargs)
        self.alpha = float(alpha)
        head = self.student.head
        dim = head_feature_dim(head) if self.pca_tokens == 'all' else (
            getattr(head, 'hidden_dim', None) or head.in_channels)
        self.pca = PCAProjector(dim, **pca_cfg)

    def deploy_graph(self) -> Tuple[nn.Module, str]:
        """The classifier, image batch -> logits (the host's ``tensor``
        mode)."""
        return _Logits(self.student), 'logits'

    def _pre_logits(self, model: nn.Module, feats) -> torch.Tensor:
        f = model.head.pre_logits(feats)
        if not isinstance(f, (tuple, list)):
            return f
        return f[0] if self.pca_tokens == 'first' else torch.cat(f, dim=-1)

    @torch.no_grad()
    def teacher_features(self, inputs: torch.Tensor) -> torch.Tensor:
        return self._pre_logits(self.teacher,
                                self.teacher.extract_feat(inputs))

    @property
    def needs_prepare(self) -> bool:
        """L_PCA is on, the method trains and the PCA is not fitted yet."""
        return self.alpha > 0 and self.trains and not self.pca.is_fitted

    @torch.no_grad()
    def prepare(self, batches: Iterable[dict]) -> dict:
        """Fit the PCA of the teacher's penultimate features."""
        n = 0
        for data in batches:
            self.pca.update(self.teacher_features(data['inputs']))
            n += len(data['inputs'])
        k = self.pca.fit()
        ev = float(self.pca.explained[:k].sum())
        print_log(f'GPLQ: PCA of the teacher features on {n} images: kept '
                  f'{k}/{self.pca.dim} dims, {ev:.1%} of the variance',
                  logger='current')
        return dict(pca_dim=k, pca_explained=ev)

    def loss(self, inputs: torch.Tensor, data_samples) -> Dict:
        feats = self.student.extract_feat(inputs)
        losses = self.student.head.loss(feats, data_samples)
        losses = {('loss_cls' if k == 'loss' else k): v
                  for k, v in losses.items()}
        if self.alpha > 0:
            if not self.pca.is_fitted:
                raise RuntimeError('L_PCA is on (alpha > 0) but the PCA is '
                                   'not fitted; GPLQHook fits it before '
                                   'training')
            f_t = self.teacher_features(inputs)
            f_s = self._pre_logits(self.student, feats)
            losses['loss_pca'] = self.alpha * self.pca(f_s, f_t)
        return losses
