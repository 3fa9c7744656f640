"""Calibration: statistics at consumer sites, gradients, and retrain-free compensation.

:func:`synthetic_images` distils calibration images from a CNN's own BatchNorm statistics
(data-free, or mixed into a few photos).
"""
from .synthetic import bn_statistics_loss, synthetic_images

__all__ = ["bn_statistics_loss", "synthetic_images"]
