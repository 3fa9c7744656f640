"""The Hugging Face architecture suite: a pass/fail table.

Every model is a random-init transformers model built from a tiny config in
models/hf.py; nothing is passed by hand but the model (inputs come from
graphprune.hf.example_inputs, heads and GQA from the graph). Per model:

  trace    torch.export + solve: groups found, by kind (heads, query groups, FFN...)
  prune    30% of heads + FFN units (graphprune.hf.prune, L2 magnitude)
  heads    every pruned head whole: q/k/v projections keep multiples of head_dim, and
           with GQA the query heads stay a multiple of the key/value heads
  shapes   the pruned model's outputs have the original shapes
  oracle   pruned model == masked original on the oracle-exact groups (atol 1e-5)
  onnx     export_onnx of the pruned model, onnxruntime vs PyTorch (atol 1e-4)
  config   whether save_pretrained/from_pretrained rebuilds the pruned model

A failure is reported with its reason; the script never stops at one.

    .venv/bin/python tools/bench_hf_suite.py                 # the issue's 14 architectures
    .venv/bin/python tools/bench_hf_suite.py --extra         # plus ALBERT, GPT-NeoX, Phi, Gemma, ...
    .venv/bin/python tools/bench_hf_suite.py --only llama-gqa bert --markdown out/suite.md
    .venv/bin/python tools/bench_hf_suite.py --extra --default   # the default call, reload included
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from json_rows import failed  # noqa: E402  (after the path)


def _leaves(out):
    import torch

    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def attention_shapes(graph) -> list[tuple[tuple, tuple, tuple]]:
    """(q, k, v) shapes at every attention site of a traced model."""
    from graphprune.kinds import attention_sites

    shape = lambda name: tuple(graph.ir.values[name.removeprefix("T:")].shape)
    return [(shape(q), shape(k), shape(v)) for _, q, k, v in attention_sites(graph)]


def whole_heads(before, after) -> str:
    """'' when every site keeps its head_dim and the query heads stay a multiple of the key
    heads (GQA), i.e. only whole heads went; else what is wrong."""
    if len(before) != len(after):
        return f"{len(before)} attention sites before pruning, {len(after)} after"
    for i, ((q0, _, v0), (q1, k1, v1)) in enumerate(zip(before, after)):
        if q1[-1] != q0[-1] or v1[-1] != v0[-1]:
            return f"site {i}: head_dim {q0[-1]}/{v0[-1]} became {q1[-1]}/{v1[-1]}"
        axis = -3 if len(q1) >= 4 else 0
        if len(q1) >= 4 and len(k1) >= 4 and q1[axis] % k1[axis]:
            return f"site {i}: {q1[axis]} query heads do not share {k1[axis]} key/value heads evenly"
    return ""


def run_one(name: str, ratio: float, tmp: Path) -> dict:
    import torch

    import graphprune as gp
    from graphprune.zoo import hf as H

    row = {"model": name}
    t0 = time.perf_counter()
    stage = "build"
    try:
        model = gp.hf.prepare(H.build(name))
        inputs = gp.hf.example_inputs(model)
        with torch.no_grad():
            ref = model(**inputs)
        stage = "trace"
        graph = gp.trace(model, (), inputs)
        kinds: dict[str, int] = {}
        for g in graph.groups:
            if g.prunable:
                kinds[g.kind] = kinds.get(g.kind, 0) + 1
        row["groups"] = " ".join(f"{k}:{v}" for k, v in sorted(kinds.items()))
        stage = "prune"
        original = copy.deepcopy(model)
        plan = gp.plan(graph, model, ratio, targets=("heads", "ffn"))
        oracle = gp.verify(original, (), plan, graph, inputs)
        model, report = gp.hf.prune(model, inputs, plan_=plan, graph=graph)
        row["params"] = f"{report.params_before / 1e3:.0f}K->{report.params_after / 1e3:.0f}K"
        heads = [g for g in graph.groups if g.kind == "head" and g.id in plan.pruned]
        row["heads cut"] = sum(len(plan.pruned[g.id]) for g in heads)
        row["oracle"] = f"{oracle.max_abs_diff:.1e}" if oracle.passed else f"FAIL {oracle.max_abs_diff:.1e}"
        with torch.no_grad():
            got = model(**inputs)
        same = [tuple(a.shape) for a in _leaves(got)] == [tuple(b.shape) for b in _leaves(ref)]
        row["shapes"] = "ok" if same else "FAIL"
        wrong_heads = whole_heads(attention_shapes(graph), attention_shapes(gp.trace(model, (), inputs)))
        row["heads"] = "whole" if not wrong_heads else f"FAIL {wrong_heads}"
        stage = "onnx"
        exp = gp.export_onnx(model, (), tmp / f"{name}.onnx", kwargs=inputs)
        row["onnx"] = f"{exp.max_abs_diff:.1e}" + ("" if exp.dynamic_batch else " static")
        row["config"] = "yes" if report.sync.loadable else "load_pruned"
        row["ok"] = oracle.passed and same and not wrong_heads
    except Exception as exc:  # the table must show every model's outcome
        failed(row, stage, exc)
    row["time"] = f"{time.perf_counter() - t0:.1f}s"
    return row


def run_default(name: str, tmp: Path) -> dict:
    """The default call as a user makes it: ``graphprune.hf.prune(model, budget={"params": 0.8},
    verify=True)`` with no inputs, then the pruned model on other inputs (same output shapes), and
    ``save_pruned`` / ``load_pruned`` (the reloaded model's largest output difference)."""
    import torch

    import graphprune as gp
    from graphprune.zoo import hf as H

    row, t0, stage = {"model": name}, time.perf_counter(), "prune"
    try:
        model = gp.hf.prepare(H.build(name))
        model, report = gp.hf.prune(model, budget={"params": 0.8}, verify=True)
        row["params"] = f"{report.params_before / 1e3:.0f}K->{report.params_after / 1e3:.0f}K"
        row["cut"] = " ".join(sorted(set(report.kinds.values()))) or "-"
        row["oracle"] = report.oracle.verdict
        row["note"] = next((n.split(":")[0] for n in report.notes if n.startswith(("kept the", "config sync"))), "")
        stage = "forward"
        other = gp.hf.example_inputs(model, seed=5)
        with torch.no_grad():
            got = model(**other)
        stage = "reload"
        gp.hf.save_pruned(model, tmp / name)
        with torch.no_grad():
            again = gp.hf.load_pruned(tmp / name)(**other)
        row["reload"] = f"{max((a - b).abs().max().item() for a, b in zip(_leaves(again), _leaves(got))):.0e}"
        row["ok"] = report.oracle.verdict != "FAIL"
    except Exception as exc:  # the table must show every model's outcome
        failed(row, stage, exc)
    row["time"] = f"{time.perf_counter() - t0:.1f}s"
    return row


def main() -> int:
    from graphprune.util.tables import table
    from graphprune.zoo import hf as H

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--extra", action="store_true", help="also try architectures beyond the issue's list")
    ap.add_argument("--only", nargs="*", help="model names (see models/hf.py)")
    ap.add_argument("--markdown", type=Path, help="also write the table as markdown here")
    ap.add_argument("--default", action="store_true",
                    help="instead: the default call (budget params=0.8, verify=True), other inputs, save/load_pruned")
    ns = ap.parse_args()
    names = ns.only or list(H.SUITE) + (list(H.EXTRA) if ns.extra else [])
    warnings.filterwarnings("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names, 1):
            print(f"[{i}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
            rows.append(run_default(name, Path(tmp)) if ns.default else run_one(name, ns.ratio, Path(tmp)))
            print(f"      {'PASS' if rows[-1]['ok'] else 'FAIL'} {rows[-1].get('reason', '')}", file=sys.stderr)
    cols = (["model", "result", "cut", "params", "oracle", "reload", "note", "time"] if ns.default else
            ["model", "result", "groups", "heads cut", "heads", "params", "shapes", "oracle", "onnx", "config", "time"])
    body = [[r["model"], "PASS" if r["ok"] else "FAIL"] + [r.get(c, "-") for c in cols[2:]] for r in rows]
    print(table(cols, body))
    failed = [r for r in rows if not r["ok"]]
    for r in failed:
        print(f"{r['model']}: {r.get('reason', 'oracle or shapes failed')}")
    print(f"{len(rows) - len(failed)}/{len(rows)} passed")
    if ns.markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in body]
        ns.markdown.parent.mkdir(parents=True, exist_ok=True)
        ns.markdown.write_text("\n".join(lines) + "\n")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
