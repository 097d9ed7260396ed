"""gplq_mm: GPLQ (activation-only QAT, then weight PTQ) for OpenMMLab ViTs.

``import gplq_mm`` (or ``custom_imports = dict(imports=['gplq_mm'])`` in a
config) registers the models (the ONNX evaluator too), the hook and the train
loop, and changes nothing else. To load
mmengine checkpoints with torch >= 2.6 in code of your own, see
:mod:`gplq_mm.utils.checkpoint` (``tools/train.py`` and ``tools/test.py``
do it for you).
"""
from .deploy import ONNXClassifier
from .engine import GPLQHook, GPLQTrainLoop
from .models import GPLQClassifier, GPLQDetector

__version__ = '0.1.0'
__all__ = ['GPLQClassifier', 'GPLQDetector', 'GPLQHook', 'GPLQTrainLoop',
           'ONNXClassifier', '__version__']
