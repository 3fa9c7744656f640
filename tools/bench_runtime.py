"""Savings that hold where models run (issue 21): the default call's onnxruntime speedup on real CNNs.

Each CNN is pruned with the default call at 20% and 50% fewer MACs (``budget={"macs": 0.8 / 0.5}``,
``round_to="auto"``, target runtime onnxruntime), and the original and pruned ONNX files are timed
in onnxruntime at batch 1 and 8, on 1 thread and on every core (per file the median of three
fresh sessions' best of runs after a warm-up, the files taking turns). Where the default call
rewrote the graph for onnxruntime (``fuse=True``: paddle2onnx's hard-swish, scalar affine ops), the
original with the same rewrites and nothing pruned is timed too: the table's speedups are against
it (pruning's own part), and in brackets against the file as given (what a user sees);
``--no-fuse`` prunes without them. ``--round-to 1`` shows what the widths alone cost.
Torch-Pruning 1.6.1 (L2, the same MACs budget reached by bisection on its ratio) sits beside it on
the models that are PyTorch modules.

Models: the CNNs of the real-model corpus (tools/fetch_corpus.py: classifiers and detectors,
pretrained ONNX files), EfficientNet-Lite0 with its ImageNet weights (tools/fetch_vision.py),
and the zoo's MobileNetV2 and ResNet-50 (full size, random weights).

    .venv/bin/python tools/bench_runtime.py                       # all, writes docs/data/runtime.json
    .venv/bin/python tools/bench_runtime.py --models mobilenetv2 --macs 0.5
    .venv/bin/python tools/bench_runtime.py --models efficientnet_lite0 --calib 32 --allocation sensitivity
                       # calibrated on 32 ImageNet photos + 128 crops/flips, the budget spent by sensitivity
    .venv/bin/python tools/bench_runtime.py --fusion --json docs/data/fusion.json
                       # nothing pruned: each corpus model as given against its fused original
    .venv/bin/python tools/bench_runtime.py --speedups 1.5 2 --json docs/data/speedup_budget.json
                       # budget={"speedup": s} instead: asked vs measured (the latency table's accuracy)
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
os.environ.setdefault("GRAPHPRUNE_PROGRESS", "0")
# each prune weighs its candidate plans afresh, as a first prune on a machine does (planning/plan_cache.py)
os.environ.setdefault("GRAPHPRUNE_PLAN_CACHE", "0")
CORPUS = Path(os.environ.get("GRAPHPRUNE_CORPUS") or Path.home() / ".cache" / "graphprune" / "corpus")
CNN_KINDS = ("classifier", "detector", "segmentation")
VISION = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")  # real ImageNet weights (tools/fetch_vision.py)
TORCH_MODELS = (*VISION, "mobilenetv2", "resnet50")


def corpus_models() -> dict[str, tuple[Path, dict | None]]:
    man = CORPUS / "manifest.json"
    if not man.is_file():
        return {}
    import onnx

    out = {}
    for e in json.loads(man.read_text()):
        if e["kind"] not in CNN_KINDS:
            continue
        graph = onnx.load(e["path"], load_external_data=False).graph
        if graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            continue  # not an image model (magika reads bytes)
        out[e["id"]] = (Path(e["path"]), e.get("input_shapes"))
    return out


def torch_model(key: str):
    import models

    if key in VISION:
        import vision_data

        model = vision_data.load_model(key)
        return model, (vision_data.model_images(key, 1),)
    model, args = models.build(key, "full")
    return model.eval(), args


def export(model, args, path: Path) -> None:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})


def feeds_for(path: Path, batch: int, shapes: dict | None) -> dict | None:
    """Random inputs at ``batch`` (None where the file's batch is fixed to another size)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    out = {}
    for inp in model.graph.input:
        if inp.name in init:
            continue
        dims = [d.dim_value if d.dim_value > 0 else None for d in inp.type.tensor_type.shape.dim]
        given = (shapes or {}).get(inp.name)
        dims = [g if d is None else d for d, g in zip(dims, given)] if given else [d or 1 for d in dims]
        if dims[0] != batch:
            if inp.type.tensor_type.shape.dim[0].dim_value > 0:
                return None
            dims[0] = batch
        out[inp.name] = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    return out


def timed(paths: list[Path], feeds: dict, threads: int, rounds: int = 3, sessions: int = 3) -> list[float]:
    """Per file, the median over ``sessions`` fresh onnxruntime sessions of each one's best-of-runs
    ms, the files taking turns round by round. One session of a file can run a steady few percent
    faster or slower than another of the same file (where its buffers land in memory: PP-OCRv4 det,
    six sessions of one file, 55.7 to 59.0 ms), so one session per file put that luck into every
    speedup; the median session is what a deployment typically gets."""
    from graphprune.planning.measure import best_of, ort_session

    per_session: list[list[float]] = [[] for _ in paths]
    for _ in range(sessions):
        opened = [ort_session(str(p), threads) for p in paths]  # a path: its external data is found
        best = [float("inf")] * len(paths)
        for _ in range(rounds):
            for i, s in enumerate(opened):
                best[i] = min(best[i], best_of(lambda s=s: s.run(None, feeds), budget_s=0.2, least=3))
        for i, ms in enumerate(best):
            per_session[i].append(ms)
        del opened
    return [statistics.median(ms) for ms in per_session]


def tp_prune(model, args, macs: float):
    """Torch-Pruning at a MACs budget: its ratio found by bisection (it takes a ratio, not a budget).

    The MACs are counted as graphprune counts them (convolutions, linear layers and matmuls, on the
    traced graph), not with Torch-Pruning's own counter: that one adds BatchNorm, activations and
    additions, which shrink only linearly with a width, so a model at "50%" by its count kept 27% of
    EfficientNet-Lite0's convolution MACs, and the side-by-side compared unequal budgets."""
    import torch
    import torch_pruning as tp

    import graphprune as gp

    def count(m) -> int:
        return gp.count_macs(gp.trace(m, args).ir)

    base = count(model)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(12):
        mid = (lo + hi) / 2
        m = copy.deepcopy(model)
        ignored = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
        pruner = tp.pruner.MetaPruner(m, args, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=mid, ignored_layers=ignored)
        pruner.step()
        if count(m) / base <= macs:
            best, hi = m, mid
        else:
            lo = mid
    return best


def photo_calib(name: str, n: int) -> list | None:
    """An EfficientNet-Lite's calibration as tools/diag_cnn.py makes it: the first ``n`` ImageNet
    photos and 4 seeded crops/flips of each, in batches of 8 (None for other models, or n = 0)."""
    if not n or name not in VISION:
        return None
    import bench_oneshot as bo
    import torch
    import vision_data as vd

    x = vd.model_images(name, photos="all")[:n]
    data = torch.cat([x, bo.augment(x, 4)])
    return [{"x": data[i:i + 8].numpy()} for i in range(0, len(data), 8)]


def photo_agreement(name: str, n: int, src: Path, dst: Path) -> dict:
    """The pruned file against the original on the photos after the first ``n`` (never calibrated
    on) in onnxruntime: top-1 agreement, agreement where the original is confident, mean KL."""
    import diag_cnn
    import torch
    import vision_data as vd

    from graphprune.planning.measure import ort_session

    x = vd.model_images(name, photos="all")[n:].numpy()
    ref, out = ([torch.from_numpy(ort_session(p.read_bytes(), 0).run(None, {"x": x})[0]) for p in (src, dst)])
    return {k: v for k, v in diag_cnn.scores(ref, out).items() if k != "rel_error"}


def fused_original(src: Path, tmp: Path, shapes: dict | None = None) -> Path | None:
    """The original with its spelled activations fused as the default call fuses them (nothing
    pruned), or None where nothing fuses: the baseline the pruning's own speedup is read against."""
    from graphprune.program.onnx_program import OnnxProgram

    program = OnnxProgram.load(src, fuse=True, input_shapes=shapes)
    if program.fused:
        program.graph()  # the analysis checks the fused outputs against the given file's, taking it back if not
    if not program.fused:
        return None
    out = tmp / f"{src.stem}-fused.onnx"
    program.save(out)
    return out


def run_one(name: str, src: Path, shapes: dict | None, macs: float, round_to, tmp: Path, peer,
            calib: list | None = None, allocation: str = "auto", photos: int = 0, fuse: bool = True) -> dict:
    """Prune ``src`` to ``macs`` and time it against the original as given and, where the default
    call fused activations, against the fused original too; with ``calib`` (the first ``photos``
    ImageNet photos and their crops) also score the pruned file on the other photos."""
    import graphprune as gp

    dst = tmp / f"{name}-{macs}.onnx"
    t = time.perf_counter()
    extra = {} if calib is None else {"calib": calib, "allocation": allocation}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = gp.prune_onnx(src, dst, budget={"macs": macs}, round_to=round_to, input_shapes=shapes,
                               verify=False, fuse=fuse, **extra)
    row = {"model": name, "macs_target": macs, "round_to": round_to, "prune_s": time.perf_counter() - t,
           "calib": None if calib is None else sum(len(b["x"]) for b in calib), "allocation": allocation,
           "allocation_note": next((n for n in report.notes if n.startswith("allocation")), ""),
           "macs_reduction": report.macs_before / max(report.macs_after, 1),
           "widths": next((n for n in report.notes if n.startswith("widths: tried")), ""),
           "tilt": " / ".join(n for n in report.notes if "where the time is" in n)}
    if calib is not None:
        row["photos"] = photo_agreement(name, photos, src, dst)
    fused = fused_original(src, tmp, shapes) if fuse else None
    row["fused"] = next((n for n in report.notes if n.startswith("rewritten for onnxruntime:")), "")
    files = [src, dst] + [f for f in (fused, peer) if f is not None]
    for batch in (1, 8):
        feeds = feeds_for(src, batch, shapes)
        if feeds is None:
            continue
        for threads in (1, os.cpu_count() or 1):
            ms = dict(zip(("dense", "graphprune", *(k for k, f in (("fused", fused), ("tp", peer)) if f)),
                          timed(files, feeds, threads)))
            row[f"b{batch}_t{threads}"] = {
                "dense_ms": ms["dense"], "graphprune_ms": ms["graphprune"], "fused_ms": ms.get("fused"),
                "speedup": ms["dense"] / ms["graphprune"],  # against the file as given: what the user sees
                "pruning_speedup": ms.get("fused", ms["dense"]) / ms["graphprune"],  # pruning's own part
                "tp_speedup": ms["dense"] / ms["tp"] if "tp" in ms else None}
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--macs", nargs="*", type=float, default=[0.8, 0.5])
    p.add_argument("--round-to", default="auto")
    p.add_argument("--no-peer", action="store_true", help="leave Torch-Pruning out")
    p.add_argument("--speedups", nargs="*", type=float, default=None,
                   help="prune with budget={'speedup': s} instead of MACs budgets")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "data" / "runtime.json")
    p.add_argument("--calib", type=int, default=0, metavar="PHOTOS",
                   help="calibrate EfficientNet-Lite0 on this many ImageNet photos (+4 crops/flips each)")
    p.add_argument("--allocation", default="auto", help="with --calib: gp.prune_onnx's allocation=")
    p.add_argument("--no-fuse", action="store_true", help="prune with fuse=False (activations kept as spelled)")
    p.add_argument("--fusion", action="store_true",
                   help="nothing pruned: every corpus model as given against its fused original (batch 1, 1 thread)")
    p.add_argument("--fusion-file", nargs=2, action="append", default=[], metavar=("ONNX", "NAME:DIMS"),
                   help="with --fusion: another file at its input's shape, timed at 1 and 2 threads (e.g. a user's model)")
    p.add_argument("--auto-max-cut", type=float, default=None,
                   help="the largest budget cut auto spends by sensitivity (budget_sensitivity.AUTO_MAX_CUT)")
    ns = p.parse_args()
    if ns.auto_max_cut is not None:
        import graphprune.planning.budget_sensitivity as bs

        bs.AUTO_MAX_CUT = ns.auto_max_cut
    if ns.speedups:
        return speedup_budgets(ns)
    if ns.fusion:
        return fusion_only(ns)
    round_to = ns.round_to if ns.round_to == "auto" else int(ns.round_to)
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        srcs = {k: v for k, v in corpus_models().items()}
        for key in TORCH_MODELS:
            srcs[key] = (tmp / f"{key}.onnx", None)
        for name, (src, shapes) in srcs.items():
            if ns.models and name not in ns.models:
                continue
            model = args = None
            if name in TORCH_MODELS:
                model, args = torch_model(name)
                export(model, args, src)
            for macs in ns.macs:
                peer = None
                if model is not None and not ns.no_peer:
                    try:
                        slim = tp_prune(copy.deepcopy(model), args, macs)
                        peer = tmp / f"{name}-{macs}-tp.onnx"
                        export(slim, args, peer)
                    except Exception as exc:  # noqa: BLE001 - the peer's failure is a result, not ours
                        print(f"  Torch-Pruning failed on {name}: {type(exc).__name__}: {exc}", flush=True)
                try:
                    row = run_one(name, src, shapes, macs, round_to, tmp, peer, photo_calib(name, ns.calib),
                                  ns.allocation, ns.calib, fuse=not ns.no_fuse)
                except Exception as exc:  # noqa: BLE001 - a refused model is a row too
                    row = {"model": name, "macs_target": macs, "error": f"{type(exc).__name__}: {exc}"[:200]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    ns.json.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


def fusion_only(ns) -> int:
    """What the default call's rewrites for onnxruntime alone gain on each model of the corpus (every
    kind): fused activations, a softmax moved, subnormal weights zeroed."""
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for e in json.loads((CORPUS / "manifest.json").read_text()):
            if ns.models and e["id"] not in ns.models:
                continue
            src, shapes = Path(e["path"]), e.get("input_shapes")
            fused = fused_original(src, Path(tmpdir), shapes)
            row = {"model": e["id"], "kind": e["kind"], "fused": fused is not None}
            if fused is not None:
                ms = timed([src, fused], feeds_for(src, 1, shapes), 1)
                row.update(given_ms=ms[0], fused_ms=ms[1], speedup=ms[0] / ms[1])
            rows.append(row)
            print(json.dumps(row), flush=True)
        for path, spec in ns.fusion_file:
            name, dims = spec.split(":")
            shapes = {name: [int(d) for d in dims.split("x")]}
            src = Path(path)
            fused = fused_original(src, Path(tmpdir), shapes)
            for threads in (1, 2):
                row = {"model": f"{src.stem} ({dims}, {threads} thread{'s' if threads > 1 else ''})", "kind": "file",
                       "fused": fused is not None}
                if fused is not None:
                    ms = timed([src, fused], feeds_for(src, 1, shapes), threads)
                    row.update(given_ms=ms[0], fused_ms=ms[1], speedup=ms[0] / ms[1])
                rows.append(row)
                print(json.dumps(row), flush=True)
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    ns.json.write_text(json.dumps(rows, indent=1))
    print("| model | kind | as given | rewritten | speedup |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['kind']} | " + (f"{r['given_ms']:.2f} ms | {r['fused_ms']:.2f} ms | {r['speedup']:.2f}x |"
                                                    if r["fused"] else "nothing rewritten | - | - |"))
    return 0


def speedup_budgets(ns) -> int:
    """budget={"speedup": s} on each model: asked, measured by the prune, and re-measured here."""
    import graphprune as gp

    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        srcs = dict(corpus_models())
        for key in TORCH_MODELS:
            srcs[key] = (tmp / f"{key}.onnx", None)
        for name, (src, shapes) in srcs.items():
            if ns.models and name not in ns.models:
                continue
            if name in TORCH_MODELS:
                export(*torch_model(name), src)
            for sp in ns.speedups:
                dst = tmp / f"{name}-sp{sp}.onnx"
                t = time.perf_counter()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        rep = gp.prune_onnx(src, dst, budget={"speedup": sp}, input_shapes=shapes, verify=False)
                except Exception as exc:  # noqa: BLE001 - an unreachable budget is a row too
                    rows.append({"model": name, "speedup": sp, "error": str(exc)[:300]})
                    print(json.dumps(rows[-1]), flush=True)
                    continue
                target, before, after = rep.budget.latency
                again = timed([src, dst], feeds_for(src, 1, shapes), 1)
                rows.append({"model": name, "speedup": sp, "measured": before / after, "remeasured": again[0] / again[1],
                             "macs_reduction": rep.macs_before / max(rep.macs_after, 1), "prune_s": time.perf_counter() - t,
                             "trials": next((n for n in rep.notes if "planned -> measured" in n), "")})
                print(json.dumps(rows[-1]), flush=True)
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    ns.json.write_text(json.dumps(rows, indent=1))
    lines = ["| model | speedup asked | measured in the prune | re-measured | MACs cut | plans measured |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['speedup']:g}x | refused: {r['error'][:90]} | | | |")
        else:
            n = r["trials"].count("->") - 1  # "planned -> measured: " itself
            lines.append(f"| {r['model']} | {r['speedup']:g}x | {r['measured']:.2f}x | {r['remeasured']:.2f}x | "
                         f"{r['macs_reduction']:.2f}x | {n} |")
    print("\n".join(lines))
    return 0


def table(rows: list[dict]) -> str:
    threads = os.cpu_count() or 1
    head = ["model", "MACs", "MACs cut", "b1 t1", f"b1 t{threads}", "b8 t1", f"b8 t{threads}",
            "0.85 x cut held?", "Torch-Pruning b1 t1"]
    scored = any("photos" in r for r in rows)
    if scored:
        head += ["agreement (other photos)", "KL"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['macs_target']:.0%} | refused: {r['error'][:80]} |" + " |" * 6)
            continue
        cells = [r.get(f"b{b}_t{t}") for b in (1, 8) for t in (1, threads)]
        speeds = [c.get("pruning_speedup", c["speedup"]) for c in cells if c]
        need = 0.85 * r["macs_reduction"] if r["macs_target"] <= 0.5 else 1.0
        held = all(s >= need for s in speeds)
        tp = cells[0]["tp_speedup"] if cells[0] and cells[0]["tp_speedup"] else None
        lines.append(f"| {r['model']} | {r['macs_target']:.0%} | {r['macs_reduction']:.2f}x | " +
                     " | ".join(_cell(c) for c in cells) +
                     f" | {'yes' if held else 'no'} | {f'{tp:.2f}x' if tp else '-'} |" +
                     (f" {r['photos']['agreement']:.2f} | {r['photos']['kl']:.2f} |" if "photos" in r else
                      " - | - |" if scored else ""))
    if any(c.get("fused_ms") for r in rows for c in (r.get(k) for k in r) if isinstance(c, dict)):
        lines.append("\nSpeedups against the original with its activations fused as the default call fuses them "
                     "(pruning's own part); in brackets, against the file as given.")
    return "\n".join(lines)


def _cell(c: dict | None) -> str:
    if not c:
        return "static batch"
    if c.get("fused_ms"):
        return f"{c['pruning_speedup']:.2f}x ({c['speedup']:.2f}x)"
    return f"{c['speedup']:.2f}x"


if __name__ == "__main__":
    sys.exit(main())
