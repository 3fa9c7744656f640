"""What every front-end's model offers the pipeline: one abstraction, two frameworks.

A ``Program`` is a model in its own framework (a torch module with example inputs, an
ONNX graph) seen through the operations pruning needs: lower it to the IR, read its
weights, run it on a batch with optional channel masks and captures of chosen values
(the oracle and calibration are that one call), apply a plan with optional weight
updates, and save. The pipeline (graphprune/pipeline.py) is written once against it.
Neither torch nor onnx is imported here.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterable, Iterator, Mapping

import numpy as np

from ..errors import PlanError, TraceError
from ..graph import DependencyGraph
from ..layouts import CouplingError
from ..planning.placement import CPU, Placement
from ..util.gc_pause import paused_gc

if TYPE_CHECKING:
    from ..graph import DependencyGraph
    from ..ir import Graph
    from ..planning.plan import PrunePlan

Masks = Mapping[tuple[str, int], np.ndarray]  # (IR value, dim) -> keep mask, as planner.keep_masks gives
OnCapture = Callable[[str, Any], None]  # (IR value, tensor) as soon as the value is computed


class Program(ABC):
    framework: str = ""
    default_atol: float = 1e-5  # the oracle's tolerance where the caller gives none
    precision: str = ""  # "float16"/"bfloat16" where the oracle's tolerance is that precision's (ONNX)
    has_gradients: bool = False  # whether gradients() works (taylor, hessian)

    def __init__(self) -> None:
        self._graph: DependencyGraph | None = None
        self._plan_ms: dict[tuple, float] = {}  # plan_latency_ms: kept widths -> measured ms (the best)
        self._plan_n: dict[tuple, int] = {}  # ... and how many times they were timed
        self.notes: list[str] = []  # what loading did to the model (the report lists them first)

    # ---- analysis ------------------------------------------------------------------------
    @abstractmethod
    def lower(self) -> "Graph":
        """The IR of this model."""

    def freeze(self, dg: "DependencyGraph") -> None:
        """Front-end freezes applied before groups are built (sizes the back-end cannot rewrite)."""

    @paused_gc
    def graph(self, freeze_io: bool = True) -> "DependencyGraph":
        """The solved dependency graph (cached for the default ``freeze_io``)."""

        if self._graph is not None and freeze_io:
            return self._graph
        ir = self.lower()
        try:
            dg = DependencyGraph(ir, freeze_io=freeze_io, program=self, before_groups=self.freeze)
        except CouplingError as exc:  # a rule's tie of two sizes that differ: chosen input shapes, or a rule's bug
            raise TraceError(f"{exc}: the model's sizes do not fit together at the input shapes it was analysed at "
                             f"({self.timed_shapes()}). Where those were chosen for dynamic dims, give the shapes the "
                             "model runs at (input_shapes={'name': (...)}, --input-shape name:DIMS); where they are the "
                             "model's own, a graphprune rule is wrong: report it with the model") from exc
        if freeze_io:
            self._graph = dg
        return dg

    @abstractmethod
    def tensors(self) -> dict[str, np.ndarray | None]:
        """Float weights by IR parameter name (None where there are no values, e.g. on meta)."""

    # ---- running ---------------------------------------------------------------------------
    @abstractmethod
    def batches(self, calib: Iterable) -> list:
        """Calibration batches in this framework's input form, checked against the model."""

    @abstractmethod
    def run(self, batch: Any, masks: Masks | None = None, capture: Iterable[str] = (),
            on_capture: OnCapture | None = None, outputs: bool = True) -> list[np.ndarray] | None:
        """Run one batch; with ``masks`` the planned channels are zeroed after every value they
        reach (the masked original). Values named in ``capture`` go to ``on_capture`` as torch
        tensors as soon as they exist; with ``outputs=False`` the run may stop after the last
        capture. Returns the model's outputs, flattened to float64 arrays."""

    def valid_rows(self, batch: Any):
        """Which (item, position) of a batch are real tokens (attention_mask), or None."""
        return None

    def rows(self, batch: Any) -> int:
        """How many samples a batch holds: real tokens (attention mask, or a 2-D integer first
        input: token ids), else items along dim 0."""
        mask = self.valid_rows(batch)
        if mask is not None:
            return int(mask.sum())
        first = self.first_input(batch)
        if first is None or not first[0]:
            return 1
        shape, integer = first
        return int(np.prod(shape)) if len(shape) == 2 and integer else shape[0]

    def take(self, batch: Any, items: np.ndarray) -> Any | None:
        """The batch with only ``items`` (a boolean mask over its leading axis, some but not all
        set), or None where this program cannot run a batch of another size."""
        return None

    @abstractmethod
    def first_input(self, batch: Any) -> tuple[tuple[int, ...], bool] | None:
        """The shape of a batch's first input and whether it holds integers."""

    @abstractmethod
    def run_variants(self, batches: list, variants: list[tuple[Masks, Mapping[str, Any]]]
                     ) -> Iterator[tuple[int, int, list[np.ndarray]]]:
        """Run every batch under every variant (keep masks, weight overrides by parameter name);
        yields ``(variant, batch, outputs)`` as float32 arrays, in any order. The work before
        a variant's first changed value may be shared between variants."""

    def gradients(self, batches: list, loss_fn) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per parameter: sums over batches of w*g and (w*g)^2 (g: gradient of the loss)."""
        raise PlanError(f"an {self.framework} model gives no gradients; taylor and hessian need a PyTorch model")

    def sequential_compensation(self, dg, batches, masks, todo, tensors, add_bias, result) -> None:
        raise PlanError(f"compensate='sequential' runs a traced PyTorch program; {self.framework} models take "
                        "'refit' or 'bias'")

    @abstractmethod
    def oracle_inputs(self, trials: int) -> list:
        """Batches the oracle compares on: the example inputs and ``trials`` more."""

    def trace_gap(self, batch) -> float:
        """How far the graph the masked runs execute (nothing masked) is from the model itself on ``batch``,
        relative to the outputs' magnitude (util/compare.py ``gaps``); inf where their outputs differ in
        number or shape. 0 for a program that is its own graph (an ONNX model)."""
        return 0.0

    def float_noise(self, batch) -> float | None:
        """The model's own float32 rounding at ``batch`` (its outputs against a float64 copy's, scaled as
        ``trace_gap``), read after an oracle FAIL; None where it cannot be measured (ONNX, other dtypes)."""
        return None

    def fixed_weights(self) -> set[str]:
        """The weights (by source path) a framework marks as not trained (PyTorch's requires_grad=False)."""
        return set()

    def seeded(self, seed: int):
        """A context in which one run draws its random numbers from ``seed`` (a no-op where runs draw none)."""
        return nullcontext()

    def draws_random(self, batch) -> bool:
        """Whether the model's outputs at ``batch`` differ between two runs at other seeds (a forward that samples)."""
        return False

    def moved_values(self, pruned: "Program", plan) -> Exception | None:
        """Read after an oracle FAIL: a number the pruned forward computes from a pruned size (``x / sqrt(head_dim)``),
        as a RewriteError naming the groups that move it, which the pipeline keeps whole and plans again; None where
        no such number explains the failure (an ONNX graph spells every number as a constant)."""
        return None

    def removal_problem(self, dg: "DependencyGraph", blocks: list) -> str:
        """Why removing ``blocks`` (residual branches) from this program fails, or '' where it works: an ONNX graph
        drops any branch; a PyTorch forward runs the user's code, which swapped modules can break."""
        return ""

    def oracle_views(self) -> dict[int, tuple[str, int, bool]]:
        """Outputs the oracle compares at their softmax's logits instead (output index -> (value
        name, softmax axis, whether the axes from it on are flattened as before opset 13)): float32
        rounding of near-tied logits moves the probabilities by far more than the tolerance
        although the pruned model is exact. A sigmoid's (axis None) the other way round: where it
        saturates, a wrong logit moves its output by less than the tolerance."""
        return {}

    def scored_outputs(self) -> list[bool] | None:
        """Per output, whether its error weighs a variant (planning/scoring.py): floating outputs,
        not integer ones a model passes through. None: every output."""
        return None

    def timed_shapes(self) -> str:
        """The inputs :meth:`latency_ms` runs on, for the report ("x 1x3x224x224")."""
        return ""

    def bias_free(self, sites) -> set[str]:
        """Sites without a bias that compensation may give one (where the framework allows it)."""
        return set()

    # ---- rewriting ---------------------------------------------------------------------------
    @abstractmethod
    def apply(self, plan: "PrunePlan", updates: Mapping[str, Any] | None = None, compensation=None,
              inplace: bool = False, proof: bool = False, values: bool = False) -> "Program":
        """The pruned program (weights changed by ``updates``, biases added by ``compensation``).
        Raises RewriteError when the result is not a valid model."""

    def plan_latency_ms(self, plan: "PrunePlan", runtime: str, least: int = 1) -> float:
        """This model pruned by ``plan`` (uncompensated: compensation changes values, not shapes),
        timed on ``runtime``. Time is a function of the kept widths, so each distinct set of widths
        is timed at most ``least`` times per program (the time tilt and the width tuning try some
        of the same plans), and the fastest figure is kept: ``least=2`` (planning/turns.py
        time_in_turns, where the candidates do not fit in memory together) keeps a slow spell of
        the machine from deciding between close plans."""
        key = (runtime, plan.widths_key)
        while self._plan_n.get(key, 0) < least:
            ms = self.apply(plan).latency_ms(runtime)
            self._plan_ms[key] = min(ms, self._plan_ms.get(key, ms))
            self._plan_n[key] = self._plan_n.get(key, 0) + 1
        return self._plan_ms[key]

    def added_params(self) -> int:
        """Parameters the last ``apply`` added beyond the plan (new biases)."""
        return 0

    runtimes: tuple[str, ...] = ()  # where latency_ms can measure; the first is the default target

    def placement(self, runtime: str | None) -> Placement:
        """The device and dtype ``runtime`` runs this model in, which its width profile and latency
        table are measured on (planning/placement.py): the CPU in float32 unless a program knows better."""
        return CPU

    def latency_ms(self, runtime: str | None = None) -> float | None:
        """Best-of-runs latency at the example inputs on ``runtime`` (one of :attr:`runtimes`)."""
        return None

    def runner(self, runtime: str) -> Callable[[], object] | None:
        """One run at the example inputs on ``runtime``, ready to repeat, so that several models can
        be timed run by run (planning/turns.py); None where this program cannot give one."""
        return None

    round_runtimes: tuple[str, ...] = ()  # the runtimes :meth:`runner` gives runs on
    held_copies = 1  # copies of its weights a pruned program holds while it is timed

    def timing(self, runtime: str) -> ContextManager:
        """What :meth:`runner`'s runs need around them (PyTorch: one intra-op thread)."""
        return nullcontext()

    @property
    def rewritten(self) -> bool:
        """Whether loading rewrote the model (ONNX: activations fused, a softmax moved): it is then
        timed even when nothing is pruned."""
        return False

    def given_latency_ms(self, runtime: str | None = None) -> float | None:
        """The model as the user gave it, where loading rewrote it (ONNX: activations fused, a softmax moved); else None."""
        return None

    @abstractmethod
    def save(self, dst: str | Path) -> Path:
        """Write the model to ``dst`` atomically (deterministic bytes)."""
