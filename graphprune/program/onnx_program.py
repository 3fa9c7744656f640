"""An ONNX model as a Program: onnxruntime runs it.

A masked run inserts a ``Where`` after every value the plan prunes; a capture adds the
wanted values as graph outputs. Sessions are built once per (masks, captures) and reused
across batches. onnxruntime takes dynamic shapes, so calibration batches may have any
batch size and sequence length the model accepts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from ..backends.onnx_bias import add_biases
from ..backends.onnx_rewrite import apply_plan_onnx
from ..errors import PlanError, RewriteError, TraceError
from ..frontends.onnx_fuse import Fused, default_opset
from ..frontends.onnx_lower import freeze_unreachable, load_model, lower, probe_inputs, with_outputs
from ..frontends.onnx_runtime_rewrites import rewrite_for_onnxruntime
from ..io.onnx_save import save_onnx
from ..oracle import scaled_diff
from ..planning.measure import best_of
from ..util.tables import shapes_text
from .base import Masks, OnCapture, Program
from .onnx_batches import fixed_batch, ort_text, split_to
from .onnx_masked import masked_model, with_weights
from .onnx_precision import FLOAT32_ATOL, half_precision, oracle_atol
from .onnx_shapes import IMAGE_SIZES, analysis_tries, common_size, runtime_refusal


class OnnxProgram(Program):
    framework = "ONNX"
    default_atol = FLOAT32_ATOL

    def __init__(self, model: onnx.ModelProto, path: str = "", feeds: dict[str, np.ndarray] | None = None,
                 input_shapes: Mapping[str, Iterable[int]] | None = None) -> None:
        super().__init__()
        self.model = model
        self.path = str(path)
        self.precision = half_precision(model)  # the oracle's tolerance follows it (program/onnx_precision.py)
        self.default_atol = oracle_atol(self.precision)
        self._feeds = None  # the inputs checks and latency run on (default: probe_inputs)
        self._timed: dict[str, np.ndarray] | None = None  # latency_feeds, once made
        if feeds is not None:
            self._feeds = {k: np.asarray(v) for k, v in feeds.items()}
            missing = sorted(set(self.input_names) - set(self._feeds))
            extra = sorted(set(self._feeds) - set(self.input_names))
            if missing or extra:
                raise PlanError(f"example inputs must give exactly the model's inputs {self.input_names}; "
                                + (f"missing {missing}" if missing else f"unknown {extra}"))
        shapes = {k: tuple(v.shape) for k, v in (self._feeds or {}).items()}
        shapes.update({k: tuple(v) for k, v in (input_shapes or {}).items()})
        self._shapes = shapes or None  # what the user said the inputs look like
        self._analysis: dict[str, list[int]] | None = None  # every input's dims the graph was analysed at
        self._fallback = False  # whether the analysis needed an image size for dynamic dims
        self._sessions: dict[Any, Any] = {}
        self._added = 0
        self.fused = Fused()  # what load(fuse=True) rewrote; the file at self.path is the model as given
        self._fuse_checked = False

    @classmethod
    def load(cls, path, feeds: dict[str, np.ndarray] | None = None,
             input_shapes: Mapping[str, Iterable[int]] | None = None, fuse: bool = False) -> "OnnxProgram":
        """``fuse``: write activations spelled as several ops as the single ops onnxruntime keeps in its
        blocked layout (frontends/onnx_fuse.py), and move a softmax behind a Transpose ahead of it where
        onnxruntime's own transpose is then cheaper (frontends/onnx_softmax.py), fold a Mul/Add by a
        scalar beside a convolution into it (frontends/onnx_affine.py), write other scalar affine
        chains on image tensors as one BatchNormalization (frontends/onnx_channel_affine.py), write a
        Split of a convolution's output as one convolution per piece (frontends/onnx_split_conv.py) and set
        subnormal weights to zero (frontends/onnx_subnormal.py); once the analysis has
        its input shapes the outputs are checked against the file as given (read again, not held: a
        large model is not kept twice), which is taken back if they differ, and the report times that
        file beside the rewritten one."""

        program = cls(load_model(path), str(path), feeds, input_shapes)
        if fuse:
            program.fused = rewrite_for_onnxruntime(program.model)  # in place: the given model is read again when needed
        return program

    def lower(self):
        """The IR, analysed at the user's input shapes. Without them, an image's dynamic height and
        width (a rank-4 float input with its channels declared) are set to a common image size
        (:data:`IMAGE_FIRST`, then the others) so that timings and widths mean something; other
        dynamic dims are set to 1, and where the graph needs a real size there (a detector's
        concat/split heads) or onnxruntime cannot run it there, the dims past the batch are tried
        at each of :data:`IMAGE_SIZES` in turn. The first size that works is used (a note says so)."""

        tries = analysis_tries(self.model, self._shapes)
        errors = [tries.first_error] if tries.first_error else []
        for k, dims in enumerate(tries.dims):
            try:
                feeds = self._feeds if self._feeds is not None and all(
                    list(self._feeds[k].shape) == list(v) for k, v in dims.items() if k in self._feeds) else None
                ir = lower(self.model, dims, feeds)
            except TraceError as exc:
                errors.append((dims, str(exc)))
                continue
            last = k + 1 == len(tries.dims)
            refused = None if feeds is not None or last else runtime_refusal(self.session(), self.model, dims,
                                                                             tries.timed_apart(k))
            if refused:  # analysable, but onnxruntime cannot run it there: the oracle and timings could not
                errors.append((dims, refused))
                continue
            tries.common = common_size(self.session(), self.model, dims) if tries.mode == "sized" else None
            try:  # where the common size runs but does not analyse, the smallest that works stays
                ir, dims = (lower(self.model, tries.common, None), tries.common) if tries.common else (ir, dims)
            except TraceError:
                tries.common = None
            self._analysis, self._fallback = dims, tries.sized(k)
            note = tries.note(self.model, k, errors)
            if note:
                self.notes = [n for n in self.notes if not n.startswith("input shapes:")] + [note]  # lowered again
            return self._check_fused(dims, feeds) or ir
        if len(errors) == 1:
            raise TraceError(errors[0][1])
        spelled = ", ".join(f"{s}" for s in [1] + list(IMAGE_SIZES))
        raise TraceError(f"{errors[0][1]}. Tried the dynamic dims at {spelled}; none worked. Give the input shapes "
                         "(input_shapes={'name': (1, 3, 640, 640)}, --input-shape name:1x3x640x640) or example "
                         "inputs (inputs={...}, --inputs feeds.npz)")

    def _check_fused(self, dims, feeds):
        """None where nothing was fused or the fused outputs match the given model's at the analysed
        shapes; else the given model is taken back and its IR returned (the note says why)."""
        if not self.fused or self._fuse_checked:
            return None
        self._fuse_checked = True
        given = load_model(self.path)
        try:
            gap = output_gap(given, self.model, feeds or probe_inputs(self.model, dims=dims))
            why = f"differ from the given one's by {gap:.2e} (relative), above {self.default_atol:g}"
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own types: the rewrite does not run
            gap, why = float("inf"), f"do not run in onnxruntime ({ort_text(exc, 200)})"
        if gap <= self.default_atol:
            self.notes.append(self.fused.note())
            return None
        self.notes.append(f"rewritten for onnxruntime: taken back; the rewritten graph's outputs {why}")
        self.model, self.fused, self._sessions = given, Fused(), {}  # no session of the rejected model
        return self.lower()

    @property
    def rewritten(self) -> bool:
        return bool(self.fused)

    def analysis_dims(self) -> dict[str, list[int]]:
        if self._analysis is None:
            self.graph()
        return self._analysis

    def freeze(self, dg) -> None:

        freeze_unreachable(dg, self.model)

    def tensors(self) -> dict[str, np.ndarray]:
        return {i.name: numpy_helper.to_array(i).astype(np.float32) for i in self.model.graph.initializer
                if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)}

    @property
    def input_names(self) -> list[str]:
        inits = {i.name for i in self.model.graph.initializer}
        return [i.name for i in self.model.graph.input if i.name not in inits]

    # ---- running ---------------------------------------------------------------------------
    def batches(self, calib: Iterable) -> list[dict[str, np.ndarray]]:
        """onnxruntime feeds: each batch a dict by input name, or a tuple in the model's input order."""
        import torch

        names = self.input_names
        out = []
        for k, batch in enumerate(calib):
            if isinstance(batch, dict):
                feeds = dict(batch)
            elif isinstance(batch, (tuple, list)):
                feeds = dict(zip(names, batch))
            else:
                feeds = {names[0]: batch} if len(names) == 1 else None
            if feeds is None or set(feeds) != set(names):
                raise PlanError(f"calibration batch {k} must give the model's inputs {names} (a dict by name, or a "
                                f"tuple in this order); it gives {sorted(feeds) if feeds else type(batch).__name__}")
            out.append({n: np.asarray(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v)
                        for n, v in feeds.items()})
        if not out:
            raise PlanError("calib= holds no batches; pass a list of example batches, or leave it out")
        out, note = split_to(out, fixed_batch(self.model, names))
        self.notes += [note] if note and note not in self.notes else []
        return out

    def session(self, masks: Masks | None = None, capture: Iterable[str] = ()):
        key = (_masks_key(masks) if masks else None, tuple(sorted(capture)))
        if key not in self._sessions:
            model = masked_model(self.model, self.graph(), masks) if masks else self.model
            if key[1]:
                model = with_outputs(model, key[1])
            try:
                self._sessions = {key: session(model)}  # one at a time: a session holds the model's memory
            except Exception as exc:  # onnxruntime raises its own exception types
                raise PlanError(f"onnxruntime cannot run the model: {ort_text(exc)}") from exc
        return self._sessions[key]

    def run(self, batch: dict, masks: Masks | None = None, capture: Iterable[str] = (),
            on_capture: OnCapture | None = None, outputs: bool = True) -> list[np.ndarray] | None:
        import torch

        inputs = set(self.input_names)
        fetched = sorted(set(capture) - inputs)  # a captured graph input is the feed itself
        sess = self.session(masks, fetched)
        names = [o.name for o in sess.get_outputs()]
        wanted = (names if outputs else []) + [n for n in fetched if not outputs or n not in names]
        try:
            got = dict(zip(wanted, sess.run(wanted, batch)))
        except Exception as exc:  # a wrong name, dtype or shape: onnxruntime's message says which
            raise PlanError(f"the inputs do not run in onnxruntime: {ort_text(exc)}. Give arrays with "
                            "the model's input names, dtypes and shapes") from exc
        for name in sorted(set(capture)):
            arr = batch[name] if name in inputs else got[name]
            on_capture(name, torch.from_numpy(np.ascontiguousarray(arr)))
        n_out = len(self.model.graph.output)
        return [got[n].astype(np.float64) for n in names[:n_out]] if outputs else None

    def valid_rows(self, batch):
        import torch

        mask = batch.get("attention_mask")
        return torch.from_numpy(np.asarray(mask)) if mask is not None and np.ndim(mask) == 2 else None

    def first_input(self, batch):
        first = np.asarray(batch[self.input_names[0]])
        return tuple(first.shape), bool(np.issubdtype(first.dtype, np.integer))

    def take(self, batch, items):
        """Every input whose leading axis is the batch's items, cut to ``items``; None where an
        input's leading dimension is fixed in the graph (onnxruntime would refuse the batch)."""
        n = len(items)
        dims = [i.type.tensor_type.shape.dim for i in self.model.graph.input if i.name in batch]
        if any(len(d) and d[0].HasField("dim_value") for d in dims):
            return None
        return {k: v[items] if np.ndim(v) and np.shape(v)[0] == n else v for k, v in batch.items()}

    def run_variants(self, batches, variants):
        """One session per variant: the masked graph with its weights replaced."""
        for v, (masks, overrides) in enumerate(variants):
            model = masked_model(self.model, self.graph(), masks) if masks else self.model
            if overrides:
                model = with_weights(model, overrides)
            try:
                sess = session(model)
            except Exception as exc:  # onnxruntime raises its own exception types
                raise PlanError(f"onnxruntime cannot run a masked variant: {ort_text(exc)}") from exc
            n_out = len(self.model.graph.output)
            for k, b in enumerate(batches):
                try:
                    outs = sess.run(None, b)
                except Exception as exc:  # onnxruntime's own types: a batch the model cannot take
                    raise PlanError(f"calibration batch {k} does not run in onnxruntime: {ort_text(exc)}. "
                                    "Give arrays with the model's input names, dtypes and shapes") from exc
                yield v, k, [np.asarray(o, dtype=np.float32) for o in outs[:n_out]]

    def feeds(self) -> dict[str, np.ndarray]:
        if self._feeds is not None:
            return self._feeds
        dims = self.analysis_dims()
        return probe_inputs(self.model, dims=dims if self._shapes or self._fallback else None)

    def scored_outputs(self) -> list[bool]:
        floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
        return [o.type.tensor_type.elem_type in floats for o in self.model.graph.output]

    def latency_feeds(self) -> dict[str, np.ndarray]:
        """The inputs latency is timed at: the example inputs, else the shapes the graph was
        analysed at (dynamic dims at 1, or the image size the analysis fell back on), as the
        latency table prices each layer. :meth:`feeds` puts 2 on a dynamic batch instead, so the
        shape check catches a batch size baked into a rewrite; nobody means that as one run's time."""
        if self._timed is None:
            self._timed = self._feeds if self._feeds is not None else probe_inputs(self.model, dims=self.analysis_dims())
        return self._timed

    def timed_shapes(self) -> str:
        return shapes_text(self.latency_feeds().items())

    def oracle_views(self) -> dict[int, tuple[str, int, bool]]:
        producer = {o: n for n in self.model.graph.node for o in n.output}
        old = default_opset(self.model) < 13  # a softmax then normalises all axes from its own on
        views = {}
        for k, out in enumerate(self.model.graph.output):
            node = producer.get(out.name)
            if node is None or node.domain not in ("", "ai.onnx") or node.input[0] in self.input_names:
                continue
            if node.op_type in ("Softmax", "LogSoftmax"):
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1 if old else -1)
                views[k] = (node.input[0], axis, old)
            elif node.op_type == "Sigmoid":  # a saturated sigmoid hides a logit error of any size
                views[k] = (node.input[0], None, False)
        return views

    def oracle_inputs(self, trials: int) -> list[dict[str, np.ndarray]]:
        # The masks follow the analysis shapes (dynamic dims at 1 unless the user gave shapes,
        # frontends/onnx.concretize): a dim merging batch and heads is heads alone there, so the
        # oracle runs at those sizes. Given example inputs come first; the rest are random
        # arrays of the same shapes (integers within the example's range: token ids stay valid).
        dims = self.analysis_dims()
        out = [self._feeds] if self._feeds is not None else []
        for k in range(1 + trials - len(out)):
            out.append(probe_inputs(self.model, seed=k, dims=dims, like=self._feeds))
        return out

    # ---- rewriting ---------------------------------------------------------------------------
    def apply(self, plan, updates: Mapping[str, Any] | None = None, compensation=None,
              inplace: bool = False, proof: bool = False, values: bool = False) -> "OnnxProgram":
        """The pruned model, held to onnx.checker and run once in onnxruntime; the outputs keep
        their shapes (so ``proof`` asks nothing more)."""

        arrays = {k: (v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for k, v in (updates or {}).items()}
        pruned = apply_plan_onnx(self.model, self.graph(), plan, arrays)
        added = add_biases(pruned, self.graph(), plan, compensation) if compensation is not None else 0
        try:
            onnx.checker.check_model(pruned, full_check=True)
        except Exception as exc:
            raise RewriteError(f"the pruned model fails onnx.checker: {exc}") from exc
        out = OnnxProgram(pruned, feeds=self.feeds())
        out._added, out._timed = added, self.latency_feeds()
        feeds = self.feeds()
        before, after = self.run(feeds), out.run(feeds)
        if [a.shape for a in before] != [a.shape for a in after]:
            raise RewriteError(f"pruned outputs have shapes {[a.shape for a in after]}, not "
                               f"{[a.shape for a in before]}")
        return out

    def bias_free(self, sites) -> set[str]:
        """Conv and Gemm sites without a bias input (one can be appended), and MatMul sites (an
        Add after them carries it)."""
        ops = {n.name: n.op for n in self.graph().ir.nodes}
        n_in = {n.name: len(n.args) for n in self.graph().ir.nodes}
        return {s.node for s in sites if s.b is None and (ops[s.node] == "onnx.MatMul" or (
            ops[s.node] in ("onnx.Conv", "onnx.Gemm") and n_in[s.node] == 2))}

    def added_params(self) -> int:
        return self._added

    runtimes = ("onnxruntime",)

    def latency_ms(self, runtime: str | None = None) -> float:
        """Best of repeated onnxruntime runs on one thread at the example inputs, after a warm-up."""

        if runtime not in (None, "onnxruntime"):
            raise PlanError(f"an ONNX model runs on onnxruntime, not {runtime!r}: pass runtime='onnxruntime' or None")
        return self._latency(self.model)

    def given_latency_ms(self, runtime: str | None = None) -> float | None:
        """The model as loaded, where :meth:`load` fused its activations (else None)."""
        return self._latency(load_model(self.path)) if self.rewritten else None

    def _latency(self, model: onnx.ModelProto) -> float:
        return best_of(self._runner(model), budget_s=0.25)

    def runner(self, runtime: str):
        return self._runner(self.model) if runtime == "onnxruntime" else None

    round_runtimes = ("onnxruntime",)
    held_copies = 2  # the pruned model and its session's copy of the weights

    def _runner(self, model: onnx.ModelProto):
        """A one-thread session's run at the example feeds, run once (a model onnxruntime refuses is
        an error that names the feeds). This program's own model reuses its session (a pruned
        program's holds the shape check's): one session per candidate, not two."""
        sess = self.session() if model is self.model else session(model)
        feeds = self.latency_feeds()
        try:
            sess.run(None, feeds)
        except Exception as exc:  # onnxruntime's own exception types
            raise PlanError(f"onnxruntime cannot run the model on {', '.join(f'{k}{v.shape}' for k, v in feeds.items())}"
                            f": {ort_text(exc)}. Give example inputs (inputs=, --inputs feeds.npz)") from exc
        return lambda: sess.run(None, feeds)

    def save(self, dst: str | Path) -> Path:
        return save_onnx(self.model, dst)  # external data beside it past 2 GB (io/onnx_save.py)


def _masks_key(masks: Masks) -> tuple:
    return tuple((k, m.tobytes()) for k, m in sorted(masks.items()))


def output_gap(given: onnx.ModelProto, fused: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> float:
    """How far the fused model's outputs are from the given one's on ``feeds`` (oracle.scaled_diff: NaN and inf count)."""
    return scaled_diff(session(fused).run(None, feeds), session(given).run(None, feeds))


def session(model: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
