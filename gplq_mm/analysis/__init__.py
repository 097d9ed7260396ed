"""The quantization report (``tools/analyze.py``): where the bits go."""
from .report import collect, write_report

__all__ = ['collect', 'write_report']
