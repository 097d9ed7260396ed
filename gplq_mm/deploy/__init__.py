"""Deployment: ONNX export of GPLQ models (:mod:`.export`), their storage
form (:mod:`.storage`), onnxruntime and OpenVINO sessions
(:mod:`.session`), evaluation through the config's metric
(:mod:`.evaluate`) and parity with PyTorch (:mod:`.verify`). onnx,
onnxruntime and openvino are imported only when used."""
from .det_export import DEPLOY_FORMS, detector_test_config, export_detector
from .evaluate import ONNXClassifier, onnx_test_config
from .export import (
                     FORMS,
                     MIN_OPSET,
                     check_exportable,
                     check_opset,
                     export_forms,
                     export_onnx,
                     trace,
)
from .session import (
    INTEGER_KERNELS,
    RUNTIMES,
    kernel_ops,
    latency,
    run_batched,
    session,
)
from .storage import load_storage, to_storage
from .verify import check_graph, code_agreement, parity

__all__ = ['FORMS', 'MIN_OPSET', 'check_exportable', 'check_opset',
           'export_onnx', 'export_forms', 'trace', 'load_storage',
           'to_storage', 'INTEGER_KERNELS', 'RUNTIMES', 'ONNXClassifier',
           'code_agreement', 'kernel_ops', 'latency', 'run_batched',
           'onnx_test_config', 'parity', 'session', 'check_graph',
           'DEPLOY_FORMS', 'detector_test_config', 'export_detector']
