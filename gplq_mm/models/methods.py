"""GPLQ and its baselines, one config switch (``model.method``) apart."""
import dataclasses
from typing import Dict, Tuple

__all__ = ['MethodRecipe', 'METHODS', 'get_method', 'checkpoint_name',
           'stage1_name']


@dataclasses.dataclass(frozen=True)
class MethodRecipe:
    """What a method does around the host's training loop.

    Args:
        quant (dict): ``QuantConfig`` defaults of the method (the config's
            ``quant_cfg`` wins). Defaults to ``{}``.
        trains (bool): Stage 1 trains (QAT); False: PTQ, the train loop is
            skipped. Defaults to True.
        weights_in_stage1 (bool): Weights are fake-quantized (and their
            steps learned) while training: direct W4A4 QAT.
            Defaults to False.
        qwt (bool): QwT compensation in Stage 2. Defaults to True.
        clip (tuple[float]): Per-channel weight clipping candidates
            (percentiles of ``|w|``). Defaults to the paper's four.
        reparam (bool): RepQ-ViT reparameterization of post-LayerNorm
            activations before calibration. Defaults to False.
    """
    quant: Dict = dataclasses.field(default_factory=dict)
    trains: bool = True
    weights_in_stage1: bool = False
    qwt: bool = True
    clip: Tuple[float, ...] = (0.999, 0.9999, 0.99999, 1.0)
    reparam: bool = False

    def __post_init__(self):
        object.__setattr__(self, 'clip', tuple(self.clip))
        if not self.clip or not all(0 < c <= 1 for c in self.clip):
            raise ValueError(f'MethodRecipe.clip={self.clip!r} is not '
                             'allowed: use percentiles in (0, 1]')
        if self.weights_in_stage1 and not self.trains:
            raise ValueError('MethodRecipe: weights_in_stage1=True needs '
                             'trains=True')


_PER_TENSOR = dict(act_granularity='tensor', attn_granularity='tensor')

METHODS: Dict[str, MethodRecipe] = {
    'gplq': MethodRecipe(),
    'gplq-no-qwt': MethodRecipe(qwt=False),
    # GPLQ in the form integer kernels run (see QuantConfig.deployable).
    'gplq-deploy': MethodRecipe(quant=dict(deployable=True)),
    'qat-w4a4': MethodRecipe(quant=dict(weight_learnable=True),
                             weights_in_stage1=True, qwt=False),
    'minmax-ptq': MethodRecipe(quant=dict(_PER_TENSOR, attn_init='minmax'),
                               trains=False, qwt=False, clip=(1.0, )),
    'repq-ptq': MethodRecipe(quant=dict(_PER_TENSOR, softmax_grid='log_sqrt2'),
                             trains=False, qwt=False, reparam=True),
}


def get_method(name: str, owner: str = 'model') -> MethodRecipe:
    """The recipe of ``name``; a clear error for an unknown one."""
    if name not in METHODS:
        raise ValueError(f'{owner}.method={name!r} is not allowed: use one '
                         f'of {sorted(METHODS)}')
    return METHODS[name]


def checkpoint_name(method: str, w_bits: int, a_bits: int) -> str:
    """The final checkpoint a GPLQ run writes to its work dir, e.g.
    ``gplq_w4a4.pth`` (the one place the name is made)."""
    return f'{method}_w{w_bits}a{a_bits}.pth'


def stage1_name(method: str) -> str:
    """The Stage-1 (W32A4) checkpoint of a training method, e.g.
    ``gplq_stage1.pth``."""
    return f'{method}_stage1.pth'
