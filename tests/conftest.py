"""Suite-wide settings and the one structural + numerical check of a prune (check_prune).

round_to="auto" keeps widths at the multiples the target runtime's kernels favour, measured on
the machine that runs the prune (graphprune/planning/measure.py). Expected channel counts in
the tests must not depend on which machine runs them, so the suite pins the alignment to 1 (any
width) unless GRAPHPRUNE_ALIGN is set; tests/test_measure.py unsets it to test the measured path.
"""
from __future__ import annotations

import copy
import os

import pytest
import torch
from helpers import measured_macs, n_params

import graphprune as gp

os.environ.setdefault("GRAPHPRUNE_ALIGN", "1")
# candidate plans are timed afresh in every test (the fakes of test_turns / test_time_tilt script their
# timings); tests/test_plan_cache.py turns the cache of earlier prunes' timings on in a folder of its own
os.environ.setdefault("GRAPHPRUNE_PLAN_CACHE", "0")


def check_prune(model: torch.nn.Module, args: tuple, kwargs: dict | None = None, **options):
    """Prune a deep copy of ``model`` with graphprune.prune under the oracle; return (pruned, report).

    Asserts (a) structure: the pruned module's own parameter count and FlopCounterMode MACs
    are the report's, before and after, and (b) numerics: the exactness oracle (``verify=True``)
    passed on every pruned exact group. ``options`` go to graphprune.prune (latency is not
    measured unless asked: it times the model, which checks nothing here). What FlopCounterMode
    counts, and which models it cannot measure (recurrent layers): helpers.measured_macs.
    """
    args = args if isinstance(args, tuple) else (args,)
    options.setdefault("measure_latency", False)
    options.setdefault("verify", True)
    params0, macs0 = n_params(model), measured_macs(model, args, kwargs)
    pruned, report = gp.prune(copy.deepcopy(model), args, kwargs, **options)
    assert (report.params_before, report.macs_before) == (params0, macs0), (report.params_before, report.macs_before)
    assert report.params_after == n_params(pruned), (report.params_after, n_params(pruned))
    assert report.macs_after == measured_macs(pruned, args, kwargs), report.macs_after
    if options["verify"]:
        assert report.oracle is not None and report.oracle.passed, str(report.oracle)
        pruned_ids = {gid for gid, idx in report.plan.pruned.items() if idx}
        # every pruned group was either checked or named as not oracle-exact, never skipped silently
        assert set(report.oracle.checked_groups) | set(report.oracle.inexact_groups) == pruned_ids
    return pruned, report


@pytest.fixture(name="check_prune")
def check_prune_fixture():
    """:func:`check_prune` for any test that asks for it by name."""
    return check_prune
