"""The demos' data and shared steps (used by tools/ and tests/)."""
from .data import make_digit_coco, make_digits

__all__ = ['make_digits', 'make_digit_coco']
