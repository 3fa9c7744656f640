"""tools/diag_ridge.py's calibration layouts and its held-out error, which docs/runtime.md's ridge
figures (issue 21) are read with: the bench layout puts copies of a photo in both of the library's
alternating folds, the grouped one keeps them in one; the error is relative to the original output."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import diag_ridge  # noqa: E402


def _photos(n: int) -> torch.Tensor:
    """Photo i is constant i: every crop/flip of it still reads i."""
    return torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 3, 16, 16).clone()


def _photo_of(items: torch.Tensor) -> list[int]:
    return [int(round(float(t.mean()))) for t in items]


def test_grouped_layout_keeps_every_copy_of_a_photo_in_one_alternating_fold():
    x = _photos(6)
    bench, grouped = diag_ridge.calibration(x, 6, "bench"), diag_ridge.calibration(x, 6, "grouped")
    assert len(bench) == len(grouped) == 30 and sorted(_photo_of(bench)) == sorted(_photo_of(grouped))
    # the library's folds alternate item by item (calib/stats.py split_folds)
    folds = lambda items: {p: {i % 2 for i, q in enumerate(_photo_of(items)) if q == p} for p in range(6)}  # noqa: E731
    assert all(len(f) == 2 for f in folds(bench).values())  # the leak: every photo in both folds
    assert all(len(f) == 1 for f in folds(grouped).values())
    assert len(diag_ridge.calibration(x, 6, "photos")) == 6


def test_fold_layouts_of_the_bench_order():
    f = diag_ridge.folds_of(20, 4)  # 4 photos, then 4 crops of each
    assert f["alt"][:6] == [0, 1, 0, 1, 0, 1]
    assert f["grouped"][4:8] == [0] * 4 and f["grouped"][8:12] == [1] * 4 and f["grouped"][1] == 1
    assert f["halves"] == [0] * 10 + [1] * 10 and f["blocks4"][:9] == [0] * 4 + [1] * 4 + [0]


def test_held_out_error_is_relative_to_the_original_output():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    f = torch.cat([torch.randn(50, 4, generator=g, dtype=torch.float64), torch.ones(50, 1, dtype=torch.float64)], 1)
    st = {"w": w, "b": b}
    ht = f.T @ f
    assert diag_ridge.held_out_error(st, w, b, ht) == pytest.approx(0.0, abs=1e-12)
    assert diag_ridge.held_out_error(st, torch.zeros_like(w), None, ht) == pytest.approx(1.0)
    half = diag_ridge.held_out_error(st, w / 2, b / 2, ht)
    assert half == pytest.approx(0.25)
