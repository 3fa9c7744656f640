"""Importance criteria: one score per index of each group (higher = keep)."""
from __future__ import annotations

from . import data, gradient, magnitude  # noqa: F401  (each module registers its criteria)
from .base import CRITERIA, ScoreContext, attach_stats, register_importance, score_groups

__all__ = ["CRITERIA", "ScoreContext", "attach_stats", "register_importance", "score_groups"]
