"""The GPLQ wrapper models: a converted student, a frozen FP teacher."""
import contextlib
import os.path as osp
from typing import Callable, Dict, Iterable, List, Optional, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.registry import MODELS
from mmengine.runner.checkpoint import _load_checkpoint

from ..quant import (QuantConfig, calibration, convert, fit_qwt,
                     quantize_weights, qwt_blocks, set_quant_state)
from ..quant.repq import ln_linear_pairs, reparameterize
from .compile import CompiledRegions
from .pca import PCAProjector

__all__ = ['GPLQModel', 'GPLQClassifier']

STAGES = {0: 'float', 1: 'Stage 1 (activations quantized)',
          2: 'Stage 2 (weights quantized too)'}

# The method and its baselines, one config switch (``model.method``) apart.
#   quant: QuantConfig defaults of the method (the config's quant_cfg wins)
#   train: Stage 1 trains (QAT); False: PTQ, the train loop is skipped
#   weights_in_stage1: weights fake-quantized while training (direct QAT)
#   qwt: QwT compensation in Stage 2
#   clip: per-channel weight clipping candidates (percentiles of |w|)
#   reparam: RepQ-ViT reparameterization of post-LayerNorm activations
METHODS = {
    'gplq': dict(),
    'gplq-no-qwt': dict(qwt=False),
    'qat-w4a4': dict(quant=dict(weight_learnable=True),
                     weights_in_stage1=True, qwt=False),
    'minmax-ptq': dict(
        quant=dict(act_granularity='tensor', attn_granularity='tensor',
                   attn_init='minmax'),
        train=False, qwt=False, clip=(1.0, )),
    'repq-ptq': dict(
        quant=dict(act_granularity='tensor', attn_granularity='tensor',
                   softmax_grid='log2'),
        train=False, qwt=False, reparam=True),
}
_METHOD_DEFAULTS = dict(quant={}, train=True, weights_in_stage1=False,
                        qwt=True, clip=(0.999, 0.9999, 0.99999, 1.0),
                        reparam=False)


class GPLQModel(BaseModel):
    """Base of the GPLQ wrappers.

    Args:
        architecture (dict): Config of the host model (the student).
        checkpoint (str, optional): Pretrained FP32 checkpoint of
            ``architecture`` (path or URL). Required for training: it
            initializes the student and the teacher. Not needed to test a
            GPLQ checkpoint. Defaults to None.
        quant_cfg (dict, optional): :class:`~gplq_mm.quant.QuantConfig`
            fields. Defaults to None (``default_scope`` of the subclass).
        method (str): ``'gplq'`` or a baseline: ``'gplq-no-qwt'``,
            ``'qat-w4a4'`` (1-epoch QAT, weights and activations together),
            ``'minmax-ptq'``, ``'repq-ptq'`` (RepQ-ViT-style PTQ). Defaults to
            ``'gplq'``.
        use_qwt (bool): Apply fitted QwT compensators. Defaults to True.
        compile_cfg (bool | dict): ``torch.compile`` the student's and the
            teacher's backbones in training and evaluation (calibration and
            Stage 2 run eagerly): True, or a dict of ``torch.compile``
            arguments (e.g. ``dict(mode='max-autotune')``). A failure, in
            forward or in the backward probed on the first training step,
            logs one warning and the model runs eagerly from then on. Input
            sizes that change from batch to batch (detection) recompile.
            Defaults to False.
        data_preprocessor (dict, optional): Given to the host model when its
            config has none. Defaults to None.
        init_cfg (dict, optional): Unused by GPLQ; kept for mmengine.

    The persisted buffer ``gplq_stage`` (0 float, 1 W32A4, 2 W4A4) decides
    which quantizers are on, so a loaded checkpoint runs as it was saved.
    """
    default_scope: Dict = dict(include=('backbone', ))

    def __init__(self,
                 architecture: dict,
                 checkpoint: Optional[str] = None,
                 quant_cfg: Optional[dict] = None,
                 method: str = 'gplq',
                 use_qwt: bool = True,
                 compile_cfg: Union[bool, dict] = False,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if not isinstance(architecture, dict):
            raise TypeError('architecture must be the host model config (a '
                            f'dict), got {type(architecture).__name__}')
        architecture = dict(architecture)
        if data_preprocessor is not None:
            # The Runner hands the config's top-level data_preprocessor to
            # the outermost model; it belongs to the host.
            architecture.setdefault('data_preprocessor', data_preprocessor)
        self.student = MODELS.build(architecture)
        self._check_architecture(self.student)
        teacher = MODELS.build(architecture)
        teacher.eval().requires_grad_(False)
        # Not a submodule: never saved, never optimized, never DDP-synced.
        object.__setattr__(self, '_teacher', teacher)
        self.data_preprocessor = self.student.data_preprocessor
        self.checkpoint = checkpoint
        if method not in METHODS:
            raise ValueError(f'{type(self).__name__}.method={method!r} is not '
                             f'allowed: use one of {sorted(METHODS)}')
        self.method = method
        self.recipe = {**_METHOD_DEFAULTS, **METHODS[method]}
        self.quant_cfg = QuantConfig.from_any({
            **self.default_scope,
            **self.recipe['quant'],
            **dict(quant_cfg or {})
        })
        convert(self.student, self.quant_cfg)
        self.use_qwt = use_qwt
        self._compiler = CompiledRegions(compile_cfg) if compile_cfg else \
            None
        self.register_buffer('gplq_stage', torch.zeros((), dtype=torch.long))
        self.register_load_state_dict_post_hook(
            lambda mod, keys: mod.apply_stage())
        self.apply_stage()

    # -- host checks and loss, to be specialized ----------------------------
    def _check_architecture(self, model: nn.Module) -> None:
        pass

    def loss(self, inputs: torch.Tensor, data_samples) -> Dict:
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor, data_samples=None,
                mode: str = 'tensor'):
        """``loss``: the GPLQ loss; ``predict`` / ``tensor``: the host's."""
        with self.compiled():
            if mode == 'loss':
                return self.loss(inputs, data_samples)
            return self.student(inputs, data_samples, mode=mode)

    def compiled(self):
        """Context in which the backbones run compiled (``compile_cfg``)."""
        if self._compiler is None:
            return contextlib.nullcontext()
        return self._compiler.active({
            'student.backbone': self.student.backbone,
            'teacher.backbone': self.teacher.backbone})

    # -- teacher / device ---------------------------------------------------
    @property
    def teacher(self) -> nn.Module:
        return self._teacher

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self._teacher._apply(fn, *args, **kwargs)
        return self

    # -- stages -------------------------------------------------------------
    @property
    def stage(self) -> int:
        return int(self.gplq_stage)

    def set_stage(self, stage: int) -> None:
        if stage not in STAGES:
            raise ValueError(f'stage={stage!r}: use one of {list(STAGES)}')
        self.gplq_stage.fill_(stage)
        self.apply_stage()

    def apply_stage(self) -> None:
        stage = self.stage
        weight = stage >= 2 or (stage == 1
                                and self.recipe['weights_in_stage1'])
        set_quant_state(self.student, weight=weight, act=stage >= 1)
        for _, block in qwt_blocks(self.student, self.quant_cfg):
            if 'qwt' in block._modules:
                block.qwt.enabled = self.use_qwt

    # -- weights ------------------------------------------------------------
    def init_weights(self) -> None:
        """Load the FP32 checkpoint into the teacher and the student.

        The host's own initialization (random, or an ImageNet-pretrained
        backbone to download) is skipped: the strict load sets every
        parameter and buffer."""
        if self.checkpoint is None:
            raise ValueError(
                f'{type(self).__name__}.checkpoint is not set: GPLQ starts '
                'from a pretrained FP32 model (the teacher and the '
                "student's initialization); set model.checkpoint to its "
                'path or URL')
        if '://' not in self.checkpoint and not osp.isfile(self.checkpoint):
            raise FileNotFoundError(
                f'{type(self).__name__}.checkpoint={self.checkpoint!r} does '
                'not exist')
        ckpt = _load_checkpoint(self.checkpoint, map_location='cpu')
        state = ckpt.get('state_dict', ckpt)
        state = {k[7:] if k.startswith('module.') else k: v
                 for k, v in state.items()}
        for name, model in (('student', self.student),
                            ('teacher', self.teacher)):
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise ValueError(
                    f'checkpoint {self.checkpoint!r} does not match '
                    f'model.architecture ({name}): {e}') from None
        self.apply_stage()

    # -- the method's steps (called by GPLQHook) ----------------------------
    # ``batches`` are preprocessed data dicts (``inputs``, ``data_samples``).
    def check_data(self, data: dict) -> None:
        """Raise before training if ``data`` cannot train this model."""

    def _calib_forward(self, data: dict) -> None:
        """A forward that reaches every quantizer in scope."""
        self.student.extract_feat(data['inputs'])

    @torch.no_grad()
    def calibrate(self, batches: Iterable[dict]) -> int:
        """Initialize activation steps from ``batches``; enter Stage 1.

        RepQ first reparameterizes post-LayerNorm activations on the same
        batches; direct QAT also initializes the weight steps."""
        was_training = self.student.training
        self.student.eval()
        batches = list(batches)
        if self.recipe['reparam']:
            pairs = ln_linear_pairs(qwt_blocks(self.student, self.quant_cfg))
            reparameterize(pairs, lambda: [self._calib_forward(d)
                                           for d in batches])
        with calibration(self.student, 'act') as qs:
            for data in batches:
                self._calib_forward(data)
        if self.recipe['weights_in_stage1']:
            quantize_weights(self.student, self.recipe['clip'])
        self.student.train(was_training)
        self.set_stage(1)
        return len(qs)

    @torch.no_grad()
    def weight_ptq(self, batches: List[dict], qwt: bool = True,
                   ridge: float = 1e-4,
                   logger: Optional[Callable[[str], None]] = None) -> dict:
        """Stage 2: per-channel weight steps by L2 clipping search, then QwT
        block by block on ``batches``. Enters Stage 2."""
        if self.stage < 1:
            raise RuntimeError('weight PTQ needs a Stage-1 model (activation '
                               'quantizers calibrated)')
        was_training = self.student.training
        self.student.eval()
        if not self.recipe['weights_in_stage1']:  # QAT learned its steps
            n = quantize_weights(self.student, self.recipe['clip'])
            if logger:
                logger(f'weight PTQ: {n} layers quantized per output channel '
                       f'at {self.quant_cfg.w_bits} bits')
        self.set_stage(2)
        r2 = {}
        blocks = qwt_blocks(self.student, self.quant_cfg)
        if qwt and self.recipe['qwt'] and blocks:
            r2 = fit_qwt(
                blocks, batches,
                forward=lambda d: self.student.extract_feat(d['inputs']),
                set_weight_quant=lambda on: set_quant_state(
                    self.student, weight=on),
                ridge=ridge, logger=logger)
        self.student.train(was_training)
        self.apply_stage()
        return r2


@MODELS.register_module()
class GPLQClassifier(GPLQModel):
    """GPLQ for an mmpretrain ``ImageClassifier``.

    Stage-1 loss: the head's task loss (``loss_cls``) plus
    ``alpha * L_PCA`` (``loss_pca``) between the student's and the frozen
    teacher's penultimate features (the pre-logits the head consumes; DeiT's
    class and distillation tokens concatenated).

    Args:
        alpha (float): Weight of L_PCA; 0 disables it. Defaults to 1.0.
        pca_cfg (dict): ``threshold`` (explained-variance ratio, 0.6) and
            ``multiple`` (32) for the kept dimension.
        **kwargs: See :class:`GPLQModel`.
    """

    def __init__(self, *args, alpha: float = 1.0,
                 pca_cfg: Optional[dict] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = float(alpha)
        self.pca = PCAProjector(self._feature_dim(), **dict(pca_cfg or {}))

    def _check_architecture(self, model: nn.Module) -> None:
        from mmpretrain.models import ImageClassifier
        if not isinstance(model, ImageClassifier):
            raise TypeError(
                'GPLQClassifier.architecture must build an mmpretrain '
                f'ImageClassifier; it built {type(model).__name__}')

    def _feature_dim(self) -> int:
        head = self.student.head
        dim = getattr(head, 'hidden_dim', None) or getattr(
            head, 'in_channels', None)
        if dim is None:
            raise TypeError(f'cannot tell the feature width of head '
                            f'{type(head).__name__} (no in_channels)')
        return dim * 2 if type(head).__name__ == 'DeiTClsHead' else dim

    @staticmethod
    def _pre_logits(model: nn.Module, feats) -> torch.Tensor:
        f = model.head.pre_logits(feats)
        return torch.cat(f, dim=-1) if isinstance(f, (tuple, list)) else f

    @torch.no_grad()
    def teacher_features(self, inputs: torch.Tensor) -> torch.Tensor:
        return self._pre_logits(self.teacher,
                                self.teacher.extract_feat(inputs))

    @torch.no_grad()
    def fit_pca(self, batches: Iterable[dict]) -> int:
        for data in batches:
            self.pca.update(self.teacher_features(data['inputs']))
        return self.pca.fit()

    def loss(self, inputs: torch.Tensor, data_samples) -> Dict:
        feats = self.student.extract_feat(inputs)
        losses = self.student.head.loss(feats, data_samples)
        losses = {('loss_cls' if k == 'loss' else k): v
                  for k, v in losses.items()}
        if self.alpha > 0:
            if not bool(self.pca.fitted):
                raise RuntimeError('L_PCA is on (alpha > 0) but the PCA is '
                                   'not fitted; GPLQHook fits it before '
                                   'training')
            f_t = self.teacher_features(inputs)
            f_s = self._pre_logits(self.student, feats)
            losses['loss_pca'] = self.alpha * self.pca(f_s, f_t)
        return losses
