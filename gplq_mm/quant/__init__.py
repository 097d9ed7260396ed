"""Quantization core: pure PyTorch, no OpenMMLab import."""
from .config import QuantConfig
from .convert import convert, qwt_blocks, revert
from .export import prepare_export
from .hosts import HostSpec, register_host
from .layers import (
    QuantConv2d,
    QuantConvTranspose2d,
    QuantLinear,
    iter_quantizers,
)
from .ptq import fold_act_steps, fold_channel_scale, quantize_weights
from .quantizer import FakeQuantizer
from .qwt import fit_qwt
from .state import calibration, composed_paths, set_quant_state

__all__ = [
    'QuantConfig', 'convert', 'revert', 'set_quant_state', 'calibration',
    'composed_paths', 'fold_act_steps', 'fold_channel_scale',
    'quantize_weights', 'qwt_blocks', 'fit_qwt', 'prepare_export',
    'FakeQuantizer', 'QuantLinear', 'QuantConv2d', 'QuantConvTranspose2d',
    'iter_quantizers',
    'HostSpec', 'register_host'
]
