"""Calibration: statistics at consumer sites, gradients, and retrain-free compensation."""
