"""gplq_mm: GPLQ (activation-only QAT, then weight PTQ) for OpenMMLab ViTs.

``import gplq_mm`` (or ``custom_imports = dict(imports=['gplq_mm'])`` in a
config) registers the models and hooks and allow-lists the types that
mmengine checkpoints hold for torch's weights-only loader.
"""
from .engine import GPLQHook, allow_mmengine_checkpoints
from .models import GPLQClassifier, GPLQDetector

__version__ = '0.1.0'
__all__ = ['GPLQClassifier', 'GPLQDetector', 'GPLQHook', '__version__']

allow_mmengine_checkpoints()
