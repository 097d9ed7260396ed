"""GPLQ for mmdet two-stage detectors (Mask R-CNN, Cascade Mask R-CNN)."""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import MODELS

from .base import GPLQModel

__all__ = ['GPLQDetector']

# Module-name patterns quantized by each scope.
SCOPES = {
    'backbone': ('backbone', ),
    'full': ('backbone', 'neck', 'rpn_head', 'roi_head'),
}


@MODELS.register_module()
class GPLQDetector(GPLQModel):
    """GPLQ for an mmdet two-stage detector (Mask R-CNN, Cascade Mask
    R-CNN, ...).

    Stage 1 trains on the detector's own loss; optionally plus
    ``feat_loss_weight`` x the MSE between the student's and the frozen
    teacher's neck outputs (``loss_feat``).

    Args:
        scope (str): ``'backbone'`` quantizes the backbone only; ``'full'``
            also the FPN, RPN and RoI heads' Conv2d / Linear layers (how
            published W4A4 detection results are measured). The patch-embed
            input stays at 8 bits in both. Defaults to ``'backbone'``.
        feat_loss_weight (float): Weight of ``loss_feat``; 0 disables it.
            Defaults to 0.
        **kwargs: See :class:`GPLQModel`; ``quant_cfg['include']``, if
            given, overrides the scope's patterns.
    """
    task = 'two-stage detector'

    def __init__(self, *args, scope: str = 'backbone',
                 feat_loss_weight: float = 0.0,
                 quant_cfg: Optional[dict] = None, **kwargs):
        if scope not in SCOPES:
            raise ValueError(f'GPLQDetector.scope={scope!r} is not allowed: '
                             f'use one of {sorted(SCOPES)}')
        quant_cfg = {'include': SCOPES[scope], **dict(quant_cfg or {})}
        super().__init__(*args, quant_cfg=quant_cfg, **kwargs)
        self.scope = scope
        self.feat_loss_weight = float(feat_loss_weight)

    def check_data(self, data: dict) -> None:
        super().check_data(data)
        if not getattr(self.student, 'with_mask', False):
            return
        for sample in data.get('data_samples') or []:
            if 'masks' not in sample.gt_instances:
                raise ValueError(
                    f'{type(self.student).__name__} has a mask head but the '
                    'training data carry no instance masks: load them with '
                    "dict(type='LoadAnnotations', with_bbox=True, "
                    'with_mask=True) on a dataset with segmentations')

    def deploy_graph(self) -> Tuple[nn.Module, List[str]]:
        """The trunk (:class:`~gplq_mm.deploy.det_export.Trunk`): image
        batch -> FPN levels and the RPN head's outputs. The RoI heads export
        as graphs of their own, and mmdet's code runs between them
        (:func:`~gplq_mm.deploy.det_export.export_detector`)."""
        from ..deploy.det_export import Trunk, trunk_outputs
        levels = len(self.student.rpn_head.prior_generator.strides)
        return Trunk(self.student), trunk_outputs(levels)

    def forward_all_sites(self, data: dict) -> None:
        """Backbone, neck and RPN head on the images; the RoI heads through
        their training path with the ground-truth boxes as the only
        proposals, so every head (mask head included) is reached on any
        annotated image, also by a detector that detects nothing yet
        (``predict`` reaches the RoI heads only through detections). With
        the ground truth alone, the RoI sampler keeps every RoI, so the
        statistics do not depend on its random order (nor on how images are
        split over processes); its random numbers come from a forked RNG,
        so the training that follows is unchanged. Samples without
        ground truth (a validation set loaded without annotations) take
        ``predict``."""
        from mmengine.structures import InstanceData
        samples = data['data_samples']
        if not all('gt_instances' in s for s in samples):
            self.student.predict(data['inputs'], samples)
            return
        x = self.student.extract_feat(data['inputs'])
        self.student.rpn_head(x)
        proposals = [InstanceData(bboxes=s.gt_instances.bboxes.tensor
                                  if hasattr(s.gt_instances.bboxes, 'tensor')
                                  else s.gt_instances.bboxes)
                     for s in samples]
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        with torch.random.fork_rng(
                devices=[torch.cuda.current_device()] if cuda else []):
            self.student.roi_head.loss(x, proposals, samples)

    def loss(self, inputs: torch.Tensor, data_samples) -> Dict:
        feats = []
        handle = None
        if self.feat_loss_weight > 0:
            target = self.student.neck if self.student.with_neck else \
                self.student.backbone
            handle = target.register_forward_hook(
                lambda m, a, out: feats.append(out))
        try:
            losses = self.student.loss(inputs, data_samples)
        finally:
            if handle is not None:
                handle.remove()
        if feats:
            with torch.no_grad():
                f_t = self.teacher.extract_feat(inputs)
            losses['loss_feat'] = self.feat_loss_weight * sum(
                F.mse_loss(s, t) for s, t in zip(feats[0], f_t)) / len(f_t)
        return losses
