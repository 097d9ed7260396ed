"""Deployment: ONNX export of GPLQ models (:mod:`.onnx`) and running them
in onnxruntime (:mod:`.runtime`). onnx / onnxruntime are imported only when
used."""
from .onnx import (FORMS, MIN_OPSET, check_exportable, check_opset,
                   export_onnx, load_storage, to_storage)
from .runtime import (INTEGER_KERNELS, ONNXClassifier, code_agreement,
                      kernel_ops, latency, onnx_test_config, parity, session)

__all__ = ['FORMS', 'MIN_OPSET', 'check_exportable', 'check_opset',
           'export_onnx',
           'load_storage', 'to_storage', 'INTEGER_KERNELS', 'ONNXClassifier',
           'code_agreement', 'kernel_ops', 'latency', 'onnx_test_config',
           'parity', 'session']
