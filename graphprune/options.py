"""PruneOptions: every option of a prune, validated once and passed whole through the pipeline.

Every entry point (``graphprune.plan`` / ``prune``, ``prune_onnx``, ``hf.prune``,
``prune_iterative``, the CLI) builds one ``PruneOptions`` from its keyword arguments with
:meth:`PruneOptions.of`, so an option is named, documented and checked here only.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterable, Mapping

from .errors import PlanError
from .importance import CRITERIA
from .planning.allocate import ALLOCATIONS
from .planning.budget import key_values
from .planning.memory import parse_bytes
from .planning.plan import MAX_RATIO, check_ratio

COMPENSATION_MODES = (None, True, False, "refit", "bias", "sequential")
RUNTIMES = ("auto", "torch", "onnxruntime", None)


@dataclass(frozen=True)
class PruneOptions:
    """What to prune and how; each field's default is the default call's.

    - ``ratio``: share of every selected group to remove, in [0, 1).
    - ``importance``: a criterion of :data:`graphprune.importance.CRITERIA`, or ``"auto"``
      (reconstruction-aware OBS with ``calib``, activation-weighted without compensation,
      l2 magnitude without data).
    - ``round_to``: ``"auto"`` (the widths the runtime's kernels favour, measured) or a whole
      number (1: any width).
    - ``ignore``: parameter or module names whose groups stay whole.
    - ``roles`` / ``targets``: what to prune, by layout ("channel", "outer", "inner") or by kind
      ("heads", "ffn", "latent", "hidden", "query_heads", "head_dim", "conv_groups", "blocks").
    - ``ratios``: per-group overrides keyed by group id, module / parameter name, or kind.
    - ``calib``: calibration batches (tuples, dicts, a DataLoader); ``loss_fn(output, batch)``
      for the gradient criteria and depth scoring; ``calib_tokens``: stop taking batches once
      that many real tokens (attention mask 1; items where there is no token input) were seen.
    - ``compensate``: None (refit with ``calib``), True, False, "refit", "bias", "sequential";
      ``add_bias`` lets compensation give a bias to a layer that has none.
    - ``heldout_check``: the final plan refit on each half of the calibration items and scored on
      the other, so the report gives the pruned model's output error (and top-1 agreement, for class
      scores) on items its refit never saw, with a PruneWarning where agreement falls under one half
      (planning/heldout.py); False skips its two extra refits (a streamed prune's blocks do).
    - ``ridge``: the refit's ridge strength, relative to the mean diagonal of the site's input
      Gram: None cross-validates it per site (graphprune/calib/refit.py), a number fixes it at
      every site, a mapping fixes it by module name (``{"mlp.down_proj": 0.3}``) and
      cross-validates the rest. A streamed prune passes each block's choices to the next.
    - ``uniform``: every group of a kind keeps the same count (each layer's heads and FFN units
      equal), so a config with one number per kind describes the pruned model (transformers'
      ``from_pretrained``, vLLM): the data still choose *which* units each layer drops, not how many.
    - ``allocation``: "auto", "uniform", "sensitivity" or "global" ("auto" with data: sensitivity where
      it is cheap, else the uniform cut, with the heads kept where that measures better: planning/kinds.py);
      ``budget``: ``{"macs": 0.5}``,
      ``{"params": 20e6}``, ``{"latency_ms": 3}``, ``{"speedup": 2}`` or ``"macs=0.5"``;
      ``max_ratio``: the most any group loses under a budget or global allocation.
    - ``runtime``: where latency is measured and widths aligned ("auto", "torch",
      "onnxruntime", None); ``measure_latency``: time the model before and after.
    - ``fuse``: ONNX files only: activations spelled as several ops (hard-swish as Add/Clip/Mul/Div,
      hard-sigmoid as Add/Clip/Div) are written as the single ops onnxruntime keeps in its blocked
      layout, and a Softmax behind a Transpose is moved ahead of it where onnxruntime's own
      transpose is then cheaper (YOLOv8's box head), and subnormal weights (below 1.2e-38, which x86
      computes with tens of times slower) are set to zero, in the original and so in the pruned file
      (outputs checked equal; the report times the file as given too). ``False`` keeps the graph's
      ops and weights as given.
    - ``verify``: hold the plan to the exactness oracle first; ``atol``: its tolerance (None:
      the program's default).
    - ``max_memory``: the most memory the prune may use, in bytes or as "8GB" / "512MiB" (None: what
      the process holds plus what the system has available now, less a margin); a prune whose
      estimated peak (graphprune/planning/memory.py) exceeds it is refused before calibration.
    """

    ratio: float = 0.5
    importance: str = "auto"
    round_to: int | str = "auto"
    ignore: tuple[str, ...] = ()
    roles: tuple[str, ...] | None = None
    targets: tuple[str, ...] | None = None
    ratios: Mapping[int | str, float] | None = None
    calib: Any = None
    loss_fn: Callable | None = None
    calib_tokens: int | None = None
    compensate: bool | str | None = None
    add_bias: bool = False
    heldout_check: bool = True
    ridge: float | Mapping[str, float] | None = None
    uniform: bool = False
    allocation: str = "auto"
    budget: Mapping[str, float] | None = None
    max_ratio: float = MAX_RATIO
    runtime: str | None = "auto"
    measure_latency: bool = True
    fuse: bool = True
    verify: bool = False
    atol: float | None = None
    max_memory: int | str | None = None

    @classmethod
    def of(cls, options: PruneOptions | None = None, defaults: Mapping[str, Any] | None = None,
           extra: tuple[str, ...] = (), **given: Any) -> PruneOptions:
        """Options from keyword arguments (unknown names refused with the closest valid one),
        over ``options`` where given, over an entry point's own ``defaults``; ``extra``: the entry
        point's own keywords, suggested too (the CLI's --calib-generated is hf.prune's generated=)."""
        valid = {f.name for f in fields(cls) if not f.name.startswith("_")}
        for name in given:
            if name not in valid:
                known = sorted(valid | set(extra), key=len, reverse=True)
                # a known name the given one ends (calib_generated -> generated) or starts with (calibration ->
                # calib), else the closest spelling
                close = [v for v in known if name.endswith("_" + v)] or [v for v in known if name.startswith(v)] or \
                    difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise PlanError(f"unknown option {name!r}{hint} Options are: {', '.join(sorted(valid | set(extra)))} "
                                "(see graphprune.PruneOptions)")
        if given.get("ratio") is not None and given.get("budget") is not None:  # the budget chose; the ratio went unread
            raise PlanError("ratio= and budget= both choose how much goes: pass one of them")
        base = options if options is not None else cls(**dict(defaults or {}))
        return replace(base, **given)

    def replace(self, **changes: Any) -> PruneOptions:
        return PruneOptions.of(self, **changes)

    def __post_init__(self) -> None:
        check_ratio(self.ratio)
        ok = self.round_to == "auto" or (isinstance(self.round_to, int) and not isinstance(self.round_to, bool)
                                         and self.round_to >= 1)
        if not ok:
            raise PlanError(f"round_to must be 'auto' (the widths the runtime's kernels favour, measured) or a whole "
                            f"number >= 1 (1: any width), not {self.round_to!r}")
        if self.importance != "auto" and self.importance not in CRITERIA:
            raise PlanError(f"unknown importance '{self.importance}'; choose one of {sorted(CRITERIA) + ['auto']}")
        if self.compensate not in COMPENSATION_MODES:
            raise PlanError(f"compensate must be True, False, 'refit', 'bias' or 'sequential', not "
                            f"{self.compensate!r}")
        if self.compensate not in (None, False) and self.calib is None:
            raise PlanError("compensation needs calibration data: pass calib=[batch, ...] or compensate=False")
        if self.calib_tokens is not None and (not isinstance(self.calib_tokens, int)
                                              or isinstance(self.calib_tokens, bool) or self.calib_tokens < 1):
            raise PlanError(f"calib_tokens must be a whole number >= 1 (None: every batch), not {self.calib_tokens!r}")
        _check_ridge(self.ridge)
        if self.allocation not in ALLOCATIONS:
            raise PlanError(f"allocation must be one of {list(ALLOCATIONS)}, not {self.allocation!r}")
        if not isinstance(self.fuse, bool):
            raise PlanError(f"fuse must be True or False, not {self.fuse!r}")
        if not isinstance(self.uniform, bool):
            raise PlanError(f"uniform must be True or False, not {self.uniform!r}")
        if self.uniform:
            _check_uniform(self)
        if self.runtime == "none":  # the CLI's --runtime none, as a user reading it spells it here
            object.__setattr__(self, "runtime", None)
        if self.runtime not in RUNTIMES:
            raise PlanError(f"runtime {self.runtime!r} is not one graphprune measures on; choose one of "
                            f"{list(RUNTIMES)}")
        if self.max_ratio is None:  # the entry points' spelling of "the default"
            object.__setattr__(self, "max_ratio", MAX_RATIO)
        if not isinstance(self.max_ratio, (int, float)) or isinstance(self.max_ratio, bool) or \
                not 0 < self.max_ratio < 1:
            raise PlanError(f"max_ratio must be in (0, 1), got {self.max_ratio!r}")
        # normal forms, so the pipeline reads one spelling of each
        set_ = object.__setattr__
        if self.max_memory is not None:
            set_(self, "max_memory", parse_bytes(self.max_memory))
        set_(self, "ignore", _names(self.ignore, "ignore"))
        set_(self, "roles", None if self.roles is None else _names(self.roles, "roles"))
        set_(self, "targets", None if self.targets is None else _names(self.targets, "targets"))
        if self.budget is not None and not isinstance(self.budget, (str, Mapping)):
            raise PlanError(f"budget must name what it limits, {{'macs': 0.5}} or 'macs=0.5' (also params, "
                            f"latency_ms, speedup), not {self.budget!r}")
        if isinstance(self.budget, str):
            set_(self, "budget", key_values(self.budget))
        elif self.budget is not None:
            set_(self, "budget", dict(self.budget))
        if self.ratios is not None:
            set_(self, "ratios", dict(self.ratios))
        if isinstance(self.ridge, Mapping):
            set_(self, "ridge", {str(k): float(v) for k, v in sorted(self.ridge.items())})

    @property
    def latency_budget(self) -> bool:
        return self.budget is not None and bool({"latency_ms", "speedup"} & set(self.budget))


def _names(value: str | Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    try:
        names = tuple(value)
    except TypeError:
        raise PlanError(f"{what} must be a name or a list of names, not {value!r}") from None
    odd = [v for v in names if not isinstance(v, str)]
    if odd:
        raise PlanError(f"{what} takes names (a module's name in model.named_modules(), a parameter's or an "
                        f"initializer's), not {type(odd[0]).__name__} {str(odd[0])[:60]!r}")
    return names


def _check_ridge(ridge) -> None:
    values = ridge.values() if isinstance(ridge, Mapping) else [] if ridge is None else [ridge]
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise PlanError(f"ridge must be None (cross-validated), a number > 0 or a mapping of module names to "
                            f"numbers > 0 (relative to the mean diagonal of the input Gram), not {ridge!r}")


def _check_uniform(opts: PruneOptions) -> None:
    """uniform=True promises one width per kind in every layer: refuse what would break that."""
    if opts.allocation not in ("auto", "uniform"):
        raise PlanError(f"uniform=True keeps every layer's widths equal; allocation='{opts.allocation}' chooses them "
                        "per layer: pass one of the two")
    if opts.targets is not None and "blocks" in _names(opts.targets, "targets"):
        raise PlanError("uniform=True keeps every layer so that one config describes them all; depth pruning "
                        "('blocks' in targets) removes layers: drop 'blocks' or uniform=True")


def resolve_importance(opts: PruneOptions) -> str:
    """``auto``: reconstruction-aware OBS with calibration data (what compensation then
    achieves), activation-weighted without compensation, l2 magnitude without data."""
    if opts.importance != "auto":
        return opts.importance
    if opts.calib is None:
        return "l2"
    return "obs" if opts.compensate is not False else "activation"


def compensation_mode(opts: PruneOptions) -> str | None:
    """The compensation to run: None (off), "refit", "bias" or "sequential" (options checked
    that a mode other than off has data)."""
    if opts.compensate is None:
        return "refit" if opts.calib is not None else None
    if opts.compensate is False:
        return None
    return "refit" if opts.compensate is True else opts.compensate
