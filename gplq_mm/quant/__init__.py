"""Quantization core: pure PyTorch, no OpenMMLab import."""
from .convert import (QuantConfig, calibration, composed_paths, convert,
                      fold_act_steps, quantize_weights, qwt_blocks, revert,
                      set_quant_state)
from .hosts import HostSpec, register_host
from .layers import QuantConv2d, QuantLinear, iter_quantizers
from .quantizer import FakeQuantizer
from .qwt import fit_qwt

__all__ = [
    'QuantConfig', 'convert', 'revert', 'set_quant_state', 'calibration',
    'composed_paths', 'fold_act_steps',
    'quantize_weights', 'qwt_blocks', 'fit_qwt', 'FakeQuantizer',
    'QuantLinear', 'QuantConv2d', 'iter_quantizers', 'HostSpec',
    'register_host'
]
