"""The quantization report (``tools/analyze.py``): where the bits go, and
how far training moved the weights from the FP32 checkpoint."""
from .drift import weight_drift
from .report import collect, write_report

__all__ = ['collect', 'write_report', 'weight_drift']
