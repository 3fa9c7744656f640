"""Settings for everything pytest collects here: tests/ and the docstring examples in graphprune/.

round_to="auto" widths follow a profile measured on the machine that runs the prune
(graphprune/planning/measure.py), so an example's channel counts would depend on the machine,
and a first run would spend its time measuring: widths are pinned to any multiple (1) unless
GRAPHPRUNE_ALIGN is set, as tests/conftest.py does for the tests.
"""
import os

os.environ.setdefault("GRAPHPRUNE_ALIGN", "1")
