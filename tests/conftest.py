"""Suite-wide settings.

round_to="auto" keeps widths at the multiples the target runtime's kernels favour, measured on
the machine that runs the prune (graphprune/planning/measure.py). Expected channel counts in
the tests must not depend on which machine runs them, so the suite pins the alignment to 1 (any
width) unless GRAPHPRUNE_ALIGN is set; tests/test_measure.py unsets it to test the measured path.
"""
import os

os.environ.setdefault("GRAPHPRUNE_ALIGN", "1")
