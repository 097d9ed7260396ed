"""gplq_mm: GPLQ (activation-only QAT, then weight PTQ) for OpenMMLab ViTs.

``import gplq_mm`` (or ``custom_imports = dict(imports=['gplq_mm'])`` in a
config) registers the models (the ONNX evaluator and the linear probe
too), the hook, the train loops and the probe's dataset, and changes nothing
else. To load mmengine checkpoints with torch >= 2.6 in code of your own, see
:mod:`gplq_mm.utils.checkpoint` (``tools/train.py`` and ``tools/test.py``
do it for you).
"""
# first: an older torch fails here with one line, not deep in an import
from .env import check_torch_version

check_torch_version()

from .deploy import ONNXClassifier  # noqa: E402
from .engine import GPLQHook, GPLQTrainLoop  # noqa: E402
from .models import GPLQClassifier, GPLQDetector  # noqa: E402
from .probe import AnnotationList, LinearProbe, LinearProbeLoop  # noqa: E402

__version__ = '0.1.0'
__all__ = ['GPLQClassifier', 'GPLQDetector', 'GPLQHook', 'GPLQTrainLoop',
           'ONNXClassifier', 'LinearProbe', 'LinearProbeLoop',
           'AnnotationList', '__version__']
