"""A PyTorch model with example inputs, as a Program.

Lowering traces it once, on demand: one recorded forward (frontends/torch_record.py),
torch.export where the forward cannot be recorded; masked runs and captures use the
traced program's interpreter (program/torch_run.py); a plain run calls the module.
The rewrite edits the module in place (backends/torch_module.py) or a copy of it.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from ..backends.torch_depth import removal_problem, remove_blocks
from ..backends.torch_module import add_biases, rewrite
from ..backends.torch_values import moved_value
from ..calib.torch_calib import gradients, walk_grams
from ..errors import PlanError

# The tracing path is imported with the package, not inside the first trace (compiling these
# modules is a tenth of a cold prune where bytecode is not cached).
from ..frontends.torch_export import lower_trace
from ..frontends.torch_trace import trace_model
from ..frontends.torch_weight_norm import fold_weight_norm, folded_note
from ..io.onnx_export import export_onnx
from ..planning.measure import best_of
from ..planning.module_channels import ATTR as CHANNELS_ATTR
from ..planning.module_channels import composed, module_channels
from ..planning.placement import Placement, of_module
from ..reasons import LIFTED_CONSTANT, Reason
from ..util.atomic import atomic_path
from ..util.compare import gaps
from ..util.containers import container_children
from ..util.gc_pause import reclaim
from ..util.model_copy import model_copy
from ..util.tables import shapes_text
from ..util.torch_compat import ConvNd, fx_flatten_spec, kept_attributes, tree_leaves
from .base import Masks, OnCapture, Program
from .slot_masks import SlotMask, fitted, input_atoms, slot_mask
from .torch_latency import onnxruntime_latency
from .torch_oracle_inputs import draws_random, float_noise, oracle_batches, seeded
from .torch_run import Walk, as_batch, positional, retrace, structure_difference, take_items


class TorchProgram(Program):
    framework = "PyTorch"
    default_atol = 1e-5
    has_gradients = True

    def __init__(self, model: torch.nn.Module, args: tuple = (), kwargs: dict | None = None,
                 trace=None, graph=None) -> None:
        super().__init__()
        # every way in (trace, prune, a plan made earlier, hf.prune, prune_iterative, a checkpoint's replay) sees
        # the same graph: weight norm folded in place, the same function (frontends/torch_weight_norm.py)
        folded, fewer = fold_weight_norm(model)
        self.notes += [folded_note(folded, fewer)] if folded else []
        self.model = model
        self.args = args if isinstance(args, tuple) else (args,)
        self.kwargs = dict(kwargs or {})
        self._trace = trace
        self._graph = graph
        self._added = 0
        self._shaped: dict[tuple, Any] = {}  # input shapes -> trace (calibration batches of other shapes)

    @classmethod
    def of(cls, graph, model: torch.nn.Module, args: tuple = (), kwargs: dict | None = None) -> "TorchProgram":
        """``model`` seen through a graph traced earlier (from it or from an identical copy)."""
        src = graph.program
        if not isinstance(src, TorchProgram):
            raise PlanError("this graph was not traced from a PyTorch model (graphprune.trace); an ONNX graph "
                            "goes to graphprune.prune_onnx")
        if not args and not kwargs:
            args, kwargs = src.args, src.kwargs
        program = cls(model, args, kwargs, trace=src.trace(), graph=graph)
        program.notes = list(src.notes) + [n for n in program.notes if n not in src.notes]  # what loading did
        return program

    # ---- analysis ------------------------------------------------------------------------
    def trace(self):
        """The traced program (graphprune.frontends.torch_record.Trace), traced once."""
        if self._trace is None:
            self._trace = trace_model(self.model, self.args, self.kwargs)
        return self._trace

    def lower(self):
        return lower_trace(self.trace(), self.model)

    def freeze(self, dg) -> None:
        """Tensor constants torch.export lifted from module state that is neither a parameter
        nor a buffer (a tensor kept in a plain attribute or container) cannot be sliced by the
        rewrite: the channels they carry are frozen, with a reason."""
        for v in dg.ir.values.values():
            if v.kind != "const" or not v.source or self._resolves(v.source):
                continue
            reason = (f"tensor constant '{v.source}' that the trace lifted from module state (not a parameter "
                      "or buffer; a cache an earlier forward filled?) cannot be rewritten: register it as a buffer, "
                      "or prune a model that has not run yet")
            for d in range(v.rank):
                dg.solver.freeze((v.name, d), Reason(LIFTED_CONSTANT, reason))

    def _resolves(self, path: str) -> bool:
        owner, _, attr = path.rpartition(".")
        mod = self._module(owner)
        return mod is not None and isinstance(getattr(mod, attr, None), torch.Tensor)

    def tensors(self) -> dict[str, np.ndarray | None]:
        out: dict[str, np.ndarray | None] = {}
        for name, p in self.model.named_parameters(remove_duplicate=False):
            # a complex (spectral) weight by its magnitude, what weight criteria read: .float() alone drops the phase
            p = p.detach().abs() if p.is_complex() else p.detach()
            out[name] = None if p.is_meta else p.float().cpu().numpy()
        for name, b in self.model.named_buffers(remove_duplicate=False):
            if b.is_floating_point():
                out.setdefault(name, None if b.is_meta else b.detach().float().cpu().numpy())
        return out

    # ---- running ---------------------------------------------------------------------------
    def batches(self, calib: Iterable) -> list[tuple[tuple, dict]]:
        """Calibration batches as (args, kwargs), of any batch size or sequence length the
        forward allows: each input shape gets its own trace (:meth:`trace_for`). A tuple with
        more items than the example's positional inputs is a DataLoader's ``(inputs, labels)``:
        the extra items are not inputs and are dropped."""

        arity = len(self.args) if not self.kwargs else None
        batches = []
        for b in calib:
            args, kwargs = positional(self.model, self.args, *as_batch(b))  # {"x": ..., "bandwidth_id": ...}
            if arity and not kwargs and len(args) > arity:
                args = args[:arity]
            batches.append((args, kwargs))
        if not batches:
            raise PlanError("calib= holds no batches; pass a list of example batches, or leave it out")
        batches, cut = fitted(self, batches)
        note = f"calibration: {cut} batch(es) cut into batches of the example's batch size (no mask fits them)"
        self.notes += [note] if cut and note not in self.notes else []
        return batches

    def trace_for(self, batch: tuple[tuple, dict], k: int | None = None):
        """The traced program for a batch's input shapes: the example's, or a trace at the
        batch's shapes (cached per shape). Statistics and masks are keyed by node, so that trace
        must be the example's op for op; a forward whose ops change with the input shape is
        refused, naming the first node that differs."""
        main = self.trace()
        args, kwargs = batch
        where = f"calibration batch {k}" if k is not None else "a batch"
        try:
            flat = fx_flatten_spec((tuple(args), dict(kwargs)), main.in_spec)
        except Exception as exc:  # pytree raises several types on a structure mismatch
            raise PlanError(f"{where} does not have the structure of the example inputs: "
                            f"{structure_difference((self.args, self.kwargs), batch) or exc}") from exc
        got = [tuple(t.shape) for t in flat if isinstance(t, torch.Tensor)]
        if got == main.input_shapes():
            return main
        key = tuple(got)
        if key not in self._shaped:
            self._shaped[key] = retrace(self.model, main, (args, kwargs), where, got)
        return self._shaped[key]

    def _act_masks(self, masks: Masks) -> dict[str, list[tuple[int, SlotMask]]]:
        dg = self.graph()
        values, weights = dg.ir.values, getattr(dg, "masked_weights", set())
        free = input_atoms(dg) if masks else {}
        out: dict[str, list[tuple[int, SlotMask]]] = {}
        for (value, d), keep in masks.items():
            if values[value].kind == "act":
                out.setdefault(value, []).append((d, slot_mask(dg, value, d, keep, free)))
            elif value in weights:  # read through get_attr by its path (graphprune.program.torch_run)
                out.setdefault(f"param:{values[value].source}", []).append((d, slot_mask(dg, value, d, keep, {})))
        return out

    def run_raw(self, batch: tuple[tuple, dict], masks: Masks | None = None, capture: Iterable[str] = (),
                on_capture: OnCapture | None = None, outputs: bool = True) -> Any:
        """:meth:`run` with torch outputs as the model (or, masked, the traced graph) gives them."""
        args, kwargs = batch
        capture = list(capture)
        if masks is None and not capture:  # a forward that caches (rotary tables) must not move later traces' path
            with torch.no_grad(), kept_attributes(self.model):
                return self.model(*args, **kwargs) if outputs else None

        walk = Walk(self.trace(), [batch], masks=self._act_masks(masks or {}), trace_for=self.trace_for)
        at: dict[int, list[tuple[str, int | None]]] = {}
        for name in capture:
            i = walk.node_index(name)
            item = None
            if i is None:  # "split.1": item 1 of node "split"; values inside wrapped bodies are not reached
                base, _, k = name.rpartition(".")
                i, item = walk.node_index(base), (int(k) if k.isdigit() else None)
                if i is None or item is None:
                    continue
            at.setdefault(i, []).append((name, item))

        def after(i: int, env: dict) -> None:
            for name, item in at.get(i, ()):
                v = walk.node_value(0, i)
                on_capture(name, v if item is None else v[item])

        stop = len(walk.nodes) if outputs or not at else max(at) + 1
        walk.advance(stop, batch=0, after=after if at else None)
        return walk.outputs(0) if outputs else None

    def run(self, batch, masks=None, capture=(), on_capture=None, outputs=True):
        out = self.run_raw(batch, masks, capture, on_capture, outputs)
        if not outputs:
            return None
        return [t.detach().double().cpu().numpy() for t in tree_leaves(out)
                if isinstance(t, torch.Tensor)]

    def scored_outputs(self) -> list[bool] | None:
        # an input handed back (SentenceTransformer returns its features dict, token ids included) or integer
        # outputs: exact by construction, their magnitude swamped the held-out error of the embedding
        ir = self.graph().ir
        kept = [v is not None and v.kind != "input" and not v.dtype.startswith(("int", "uint", "bool"))
                for v in (ir.values.get(o) for o in ir.outputs)]
        return kept if any(kept) and not all(kept) else None

    def valid_rows(self, batch):
        mask = dict(batch[1]).get("attention_mask")
        return mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def first_input(self, batch):
        first = next((t for t in tree_leaves(batch) if isinstance(t, torch.Tensor)), None)
        return None if first is None else (tuple(first.shape), not first.is_floating_point())

    def take(self, batch, items):
        """Every input tensor whose leading axis is the batch's items, cut to ``items``; None
        where the forward cannot be traced at that batch size, or runs other ops there."""
        first = self.first_input(batch)
        n = first[0][0] if first is not None and first[0] else None
        if n != len(items):
            return None
        out = take_items(batch, n, items)
        try:
            self.trace_for(out)
        except Exception:  # noqa: BLE001 - a forward that cannot run at this size: the caller runs whole batches
            return None
        return out

    def run_variants(self, batches, variants):
        """One dense walk advanced to each variant's first changed node, forked from there:
        a variant that changes the last layer runs only the last layer."""

        walk = Walk(self.trace(), batches, trace_for=self.trace_for)
        starts = []
        for masks, overrides in variants:
            at = [walk.producer(v) for v, _ in masks]
            starts.append(min([i for i in at if i is not None] + [walk.first_reader(overrides)]))
        for v in sorted(range(len(variants)), key=lambda v: (starts[v], v)):
            walk.advance(starts[v])
            masks, overrides = variants[v]
            fork = walk.fork(self._act_masks(masks), {k: torch.as_tensor(x) for k, x in overrides.items()})
            for k in range(len(batches)):
                out = fork.outputs(k)
                fork.envs[k] = {}
                yield v, k, [t.detach().float().cpu().numpy() for t in tree_leaves(out)
                             if isinstance(t, torch.Tensor)]

    def gradients(self, batches, loss_fn):

        return gradients(self.model, batches, loss_fn)

    def sequential_compensation(self, dg, batches, masks, todo, tensors, add_bias, result) -> None:
        walk_grams(dg, self.trace(), batches, self._act_masks(masks), todo, tensors, add_bias, result, self.trace_for)

    def oracle_inputs(self, trials: int) -> list[tuple[tuple, dict]]:
        """The example inputs, plus ``trials`` random inputs of the same shapes and dtypes, integers kept
        where a draw takes the forward off the traced path (graphprune/program/torch_oracle_inputs.py)."""
        return oracle_batches(self, trials)

    def float_noise(self, batch) -> float | None:
        return float_noise(self, batch)

    def fixed_weights(self) -> set[str]:
        return {n for n, p in self.model.named_parameters(remove_duplicate=False) if not p.requires_grad}

    def seeded(self, seed: int):
        return seeded(seed, self.model)

    def draws_random(self, batch) -> bool:
        return draws_random(self, batch)

    def moved_values(self, pruned, plan):
        return moved_value(pruned.model, self.graph(), plan, self.args, self.kwargs)

    def trace_gap(self, batch) -> float:
        # a library may take another path while traced (transformers' PaliGemma), or the inputs' values choose one
        with self.seeded(0):
            traced = self.run(batch, masks={})
        with self.seeded(0):
            return gaps(traced, self.run(batch))[1]

    def bias_free(self, sites) -> set[str]:
        """Sites run by an nn.Linear / nn.ConvNd without a bias."""
        nodes = {n.name: n for n in self.graph().ir.nodes}
        out = set()
        for s in sites:
            mod = self._module(nodes[s.node].meta.module)
            if isinstance(mod, (torch.nn.Linear, ConvNd)) and mod.bias is None and s.b is None:
                out.add(s.node)
        return out

    def _module(self, path: str) -> torch.nn.Module | None:
        try:
            return self.model.get_submodule(path) if path else self.model
        except AttributeError:
            return None

    # ---- rewriting ---------------------------------------------------------------------------
    def apply(self, plan, updates: Mapping[str, Any] | None = None, compensation=None,
              inplace: bool = False, proof: bool = False, values: bool = False) -> "TorchProgram":
        """The pruned module (a copy unless ``inplace``); ``proof``: hold its shapes to the plan's by a second trace (the
        oracle could not run every cut group); ``values``: its numbers to the traced ones (backends/torch_values.py)."""

        reclaim()  # dropped copies hold cycles: with the collector paused, they wait for a collection
        model = self.model if inplace else model_copy(self.model)
        dg = self.graph()
        rewrite(model, dg, plan, self.args, self.kwargs, check=True if proof else None,
                updates=dict(updates) if updates else None, values=values)
        # what recover(blockwise=True) compares with the original's block outputs: children of containers
        blocks = set(container_children(model))
        setattr(model, CHANNELS_ATTR, composed(getattr(model, CHANNELS_ATTR, None), module_channels(dg, plan, blocks)))
        out = TorchProgram(model, self.args, self.kwargs)
        if compensation is not None and compensation.new_biases:
            out._added = add_biases(model, dg, plan, compensation)
        if plan.blocks:
            remove_blocks(model, dg, dg.removed_blocks(plan.blocks), self.args, self.kwargs)
        return out

    def removal_problem(self, dg, blocks: list) -> str:
        return removal_problem(self.model, dg, blocks, self.args, self.kwargs)

    def added_params(self) -> int:
        return self._added

    runtimes = ("torch", "onnxruntime")

    def placement(self, runtime: str | None) -> Placement:
        """Eager PyTorch runs the model where it is, in its dtype; onnxruntime on the CPU in float32."""
        return of_module(self.model).on(runtime)

    def latency_ms(self, runtime: str | None = None) -> float:
        """Best-of-runs latency at the example inputs' shapes: ``"torch"`` (eager, on the model's
        device, one CPU thread) or ``"onnxruntime"`` (exported, one thread): what a
        deployment runs, measured rather than modelled."""

        runtime = runtime or "onnxruntime"
        if runtime == "torch":
            with self.timing(runtime):
                return best_of(self.runner(runtime), budget_s=0.25)
        if runtime != "onnxruntime":
            raise PlanError(f"unknown runtime {runtime!r}: a PyTorch model is measured on 'torch' or 'onnxruntime'")
        return onnxruntime_latency(self.model, self.args, self.kwargs)

    def timed_shapes(self) -> str:
        params = inspect.signature(self.model.forward).parameters  # the forward's own names for its inputs
        names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names += [f"arg{i}" for i in range(len(names), len(self.args))]
        return shapes_text([*zip(names, self.args), *self.kwargs.items()])

    def runner(self, runtime: str):
        """Eager PyTorch: one forward at the example inputs, a GPU's work waited for; onnxruntime
        (an export per model): None."""
        if runtime != "torch":
            return None

        def forward() -> None:
            with torch.no_grad():
                self.model(*self.args, **self.kwargs)

        return of_module(self.model).synced(forward)

    round_runtimes = ("torch",)

    @contextmanager
    def timing(self, runtime: str):
        # one intra-op thread, as onnxruntime is timed: a thread pool on a shared machine waits on
        # whichever of its threads the scheduler paused, and the figure becomes the machine's load
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with kept_attributes(self.model):
                yield
        finally:
            torch.set_num_threads(threads)

    def save(self, dst: str | Path) -> Path:
        """``.onnx``: exported and checked in onnxruntime (graphprune.export_onnx); otherwise the
        whole module with ``torch.save``."""
        dst = Path(dst)
        if dst.suffix == ".onnx":
            export_onnx(self.model, self.args, dst, self.kwargs)
            return dst

        with atomic_path(dst) as tmp:
            torch.save(self.model, tmp)
        return dst

