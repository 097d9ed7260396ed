"""A checkpoint as a frozen feature extractor, and a new linear head on it:
the paper's transfer protocol (Table 1: the W4A4 ImageNet backbone, frozen,
linear-probed on fine-grained datasets)."""
import copy
import os.path as osp
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.model import BaseModel
from mmengine.registry import MODELS, DefaultScope
from mmengine.runner import CheckpointLoader

from ..models.signature import saved_signature
from ..quant.hosts import head_feature_dim
from ..utils.checkpoint import (
    check_checkpoint_file,
    mmengine_checkpoint_globals,
)
from ..utils.samples import set_cls_predictions

__all__ = ['FrozenBackbone', 'LinearProbe', 'load_frozen']

# the signature fields that are QuantConfig fields (``method`` is not)
_SIGNATURE_QUANT = ('w_bits', 'a_bits', 'attn_bits', 'patch_embed_bits',
                    'act_granularity', 'attn_granularity', 'softmax_grid',
                    'deployable')


class FrozenBackbone(nn.Module):
    """A loaded classifier (float host, or GPLQ wrapper at the stage its
    checkpoint was saved in) that only computes features: eval mode always,
    no parameter trainable, no gradient.

    The feature is the host head's pre-logits (what its last linear layer
    reads; a DeiT-distilled head's two tokens concatenated). ``built_cfg``
    is the model config it was built from (with the checkpoint's signature,
    ``internal_fp32`` and ``use_qwt``): with the checkpoint's content, what
    its features depend on."""

    def __init__(self, model: nn.Module, built_cfg: Optional[dict] = None):
        super().__init__()
        self.model = model
        self.built_cfg = built_cfg or {}
        self.model.requires_grad_(False)
        self.train(False)

    @property
    def classifier(self) -> nn.Module:
        """The host classifier: a GPLQ wrapper's student, else the model."""
        return getattr(self.model, 'student', self.model)

    @property
    def feature_dim(self) -> int:
        return head_feature_dim(self.classifier.head)

    def train(self, mode: bool = True):
        # frozen: eval mode whatever the caller asks (drop-path, dropout
        # and every quantizer's calibration stay off)
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        host = self.classifier
        f = host.head.pre_logits(host.extract_feat(inputs))
        if isinstance(f, (tuple, list)):
            f = torch.cat(f, dim=-1)
        return f.float()


def _source_model(source: str) -> Tuple[dict, Optional[dict], Config]:
    """The model config of ``source`` (a config file or a Config), its
    top-level data_preprocessor, and the config."""
    cfg = source if isinstance(source, Config) else Config.fromfile(source)
    model = copy.deepcopy(cfg.model.to_dict() if hasattr(cfg.model, 'to_dict')
                          else dict(cfg.model))
    return model, cfg.get('data_preprocessor'), cfg


def load_frozen(source, checkpoint: str, internal_fp32: bool = False,
                use_qwt: bool = True, what: str = 'LinearProbe'
                ) -> Tuple[FrozenBackbone, dict]:
    """``checkpoint`` as :class:`FrozenBackbone`, built from the config
    ``source`` it came from, and the data preprocessor config its
    backbone was trained with.

    A GPLQ checkpoint (``meta['gplq']``: Stage 1, W4A4 / W3A3 of any method,
    the deployable one too) is rebuilt as the GPLQ classifier its signature
    names (method, bits, grids) around the source's host architecture, so
    one source config serves all of them; a float checkpoint builds the host
    classifier. ``internal_fp32`` turns every quantizer and compensator of a
    GPLQ checkpoint off (its latent weights); ``use_qwt=False`` the QwT
    compensators alone. Raises ValueError, before any data is read, for a
    checkpoint without a backbone or of another architecture."""
    if checkpoint is None:
        raise ValueError(f'{what}.checkpoint is not set: the checkpoint to '
                         'probe (--cfg-options model.checkpoint=PATH)')
    if '://' not in checkpoint and not osp.isfile(checkpoint):
        raise FileNotFoundError(f'{what}.checkpoint={checkpoint!r} does not '
                                'exist')
    check_checkpoint_file(checkpoint, f'{what}.checkpoint')
    model_cfg, preprocessor, cfg = _source_model(source)
    with mmengine_checkpoint_globals():
        ckpt = CheckpointLoader.load_checkpoint(checkpoint,
                                                map_location='cpu')
    state = ckpt.get('state_dict', ckpt)
    state = {k[len('module.'):] if k.startswith('module.') else k: v
             for k, v in state.items()}
    sig = saved_signature(ckpt)
    wrapper = str(model_cfg.get('type', '')).startswith('GPLQ')
    host = model_cfg['architecture'] if wrapper else model_cfg
    if sig is not None:
        # the source's GPLQ model (its other fields: PCA tokens, scope, ...)
        # or a GPLQ classifier around the host, with the saved signature
        built = dict(model_cfg if wrapper else dict(
            type='GPLQClassifier', architecture=host), checkpoint=None,
            method=sig['method'], use_qwt=use_qwt,
            internal_fp32=internal_fp32)
        built['quant_cfg'] = dict(built.get('quant_cfg') or {}, **{
            k: sig[k] for k in _SIGNATURE_QUANT if k in sig})
        prefix = 'student.backbone.'
    else:
        built, prefix = host, 'backbone.'
    if not any(k.startswith(prefix) for k in state):
        raise ValueError(
            f'{what}.checkpoint {checkpoint!r} has no backbone (no '
            f"'{prefix}*' tensors): probe a classifier checkpoint (FP32, "
            'Stage 1 or a GPLQ W4A4 / W3A3 one)')
    preprocessor = dict(host.get('data_preprocessor') or preprocessor or {})
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        model = MODELS.build(built)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ValueError(
            f'{what}.checkpoint {checkpoint!r} does not fit the architecture '
            f'of {what}.source ({type(model).__name__}): '
            f'{" ".join(first[1:3]) or first[0]}'[:400]) from None
    return FrozenBackbone(model, built), preprocessor


@MODELS.register_module()
class LinearProbe(BaseModel):
    """A new float linear head on a frozen checkpoint's pre-logits feature.

    The backbone is exactly as it was saved (fake quantization and QwT on,
    eval mode) and nothing of it is updated: only ``head`` trains.

    Args:
        source (str): The config the checkpoint came from: a GPLQ config or
            the host classifier's (mmpretrain) config.
        checkpoint (str): The checkpoint to probe: FP32, Stage 1, or W4A4 /
            W3A3 of any method (:func:`load_frozen`).
        num_classes (int): Classes of the downstream dataset.
        in_channels (int, optional): The head's input width; when given it
            must equal the backbone's feature width. Defaults to None.
        internal_fp32 (bool): Probe the latent weights with every quantizer
            off. Defaults to False.
        use_qwt (bool): Keep the QwT compensators on. Defaults to True.
        data_preprocessor (dict, optional): Keys over the source's data
            preprocessor (whose normalization the backbone was trained
            with), e.g. ``num_classes``. Defaults to None (the source's).

    Forward takes images (``inputs``: the backbone runs, under no_grad) or
    cached ``features`` (:class:`~gplq_mm.probe.LinearProbeLoop`).
    """

    def __init__(self, source: str, checkpoint: str, num_classes: int,
                 in_channels: Optional[int] = None,
                 internal_fp32: bool = False, use_qwt: bool = True,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f'LinearProbe.num_classes={num_classes!r}: use '
                             'an int >= 2')
        backbone, pre = load_frozen(source, checkpoint, internal_fp32,
                                    use_qwt)
        pre = dict(pre, **(data_preprocessor or {}))
        pre.setdefault('type', 'mmpretrain.ClsDataPreprocessor')
        super().__init__(data_preprocessor=pre, init_cfg=init_cfg)
        self.backbone = backbone
        dim = backbone.feature_dim
        if in_channels is not None and in_channels != dim:
            raise ValueError(
                f'LinearProbe.in_channels={in_channels} but the backbone of '
                f'{checkpoint!r} gives {dim}-wide features: set '
                f'model.in_channels={dim} (or leave it unset)')
        self.source, self.checkpoint = source, checkpoint
        self.internal_fp32, self.use_qwt = internal_fp32, use_qwt
        self.head = nn.Linear(dim, num_classes)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.train(False)
        return self

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """The frozen backbone's feature of a preprocessed image batch."""
        return self.backbone(inputs)

    def forward(self, inputs: Optional[torch.Tensor] = None,
                data_samples: Optional[List] = None, mode: str = 'tensor',
                features: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None):
        if features is None:
            if inputs is None:
                raise ValueError('LinearProbe: give inputs or features')
            features = self.features(inputs)
        logits = self.head(features.to(self.head.weight.dtype))
        if mode == 'tensor':
            return logits
        if mode == 'loss':
            if labels is None:
                labels = torch.cat([s.gt_label for s in data_samples])
            return dict(loss=F.cross_entropy(logits, labels.to(
                logits.device)))
        if mode == 'predict':
            return set_cls_predictions(logits, data_samples)
        raise ValueError(f'LinearProbe: mode={mode!r}: use loss, predict or '
                         'tensor')

    def train_step(self, data, optim_wrapper) -> Dict[str, torch.Tensor]:
        """As BaseModel's, for image batches; a cached-feature batch
        (``features``, ``labels``) skips the image preprocessor."""
        if 'features' not in data:
            return super().train_step(data, optim_wrapper)
        with optim_wrapper.optim_context(self):
            dev = self.head.weight.device
            losses = self(features=data['features'].to(dev),
                          labels=data['labels'].to(dev), mode='loss')
        loss, log_vars = self.parse_losses(losses)
        optim_wrapper.update_params(loss)
        return log_vars
