"""What a GPLQ checkpoint must agree on with the model that loads it: the
quantizer layout its state means (the signature, saved in ``meta['gplq']``)
and the shapes of its tensors. One home for both checks."""
from typing import Optional

import torch
import torch.nn as nn

__all__ = ['signature', 'check_checkpoint', 'saved_signature']


def signature(method: str, quant_cfg) -> dict:
    """What a GPLQ checkpoint's quantizer state means: the method and the
    quantizer layout (bit widths, granularities, softmax grid, deployable
    form) of a :class:`~gplq_mm.quant.QuantConfig`."""
    qc = quant_cfg
    return dict(method=method, w_bits=qc.w_bits, a_bits=qc.a_bits,
                attn_bits=qc.attn_bits or qc.a_bits,
                patch_embed_bits=qc.patch_embed_bits,
                act_granularity=qc.act_granularity,
                attn_granularity=qc.attn_granularity,
                softmax_grid=qc.softmax_grid, deployable=qc.deployable,
                relu_inputs='unsigned' if qc.deployable else 'signed',
                # deployable: HostSpec.siblings / requantized_outputs
                deploy_rules=f'shared-siblings,outputs-{qc.output_bits}bit'
                if qc.deployable else 'none')


# what a signature key meant in checkpoints written before it existed
_BEFORE = dict(relu_inputs='signed', deploy_rules='none')


def saved_signature(checkpoint: dict) -> Optional[dict]:
    """The signature a checkpoint was written with; None for a float (non
    GPLQ) checkpoint."""
    return (checkpoint.get('meta') or {}).get('gplq')


def check_checkpoint(model: nn.Module, checkpoint: dict,
                     source: str) -> None:
    """Raise, before anything is loaded, when ``checkpoint`` does not fit
    ``model`` (a GPLQ wrapper): written with another signature (its steps
    would be read on another grid; a float checkpoint has none), or holding
    tensors of other shapes (e.g. another number of classes: mmengine's
    non-strict load would only warn)."""
    saved = saved_signature(checkpoint)
    if saved is not None:
        mine = model.signature()
        saved = {**{k: v for k, v in _BEFORE.items() if k in mine}, **saved}
        diff = {k: (v, mine.get(k)) for k, v in saved.items()
                if mine.get(k) != v}
        if diff:
            parts = ', '.join(f'{k}={a!r} (this config: {b!r})'
                              for k, (a, b) in diff.items())
            raise ValueError(
                f'{source} was written with {parts}: its quantizer state '
                'does not fit this config. Use the config the checkpoint was '
                'made with, or set the same values with --cfg-options (e.g. '
                'model.method / model.quant_cfg.w_bits).')
    state = checkpoint.get('state_dict', checkpoint)
    own = model.state_dict()
    bad = [f'{k}: {tuple(v.shape)} in the checkpoint, '
           f'{tuple(own[k].shape)} in the model'
           for k, v in state.items() if isinstance(v, torch.Tensor)
           and k in own and v.shape != own[k].shape]
    if bad:
        raise ValueError(f'{source} does not fit this model ({len(bad)} '
                         'tensors of another shape; another number of '
                         'classes?): ' + '; '.join(bad[:3]))
    missing = [k for k in own if 'quantizer.' in k and k not in state]
    if saved is not None and missing:
        raise ValueError(
            f'{source} holds no state for {len(missing)} quantizer tensors '
            f'of this model (e.g. {missing[0]}): it was written for a model '
            'that quantizes fewer layers (gplq_mm before 2026-12-02 left '
            'ConvTranspose2d float); run Stage 1 and 2 again from the FP32 '
            'checkpoint')
