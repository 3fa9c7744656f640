"""Prune every model of the real-model corpus (tools/fetch_corpus.py) and tabulate the outcome.

    .venv/bin/python tools/fetch_corpus.py
    .venv/bin/python tools/corpus_report.py --ratio 0.3 --out docs/data/corpus.json

Per model: pruned (parameters and MACs before/after, the oracle's error, seconds) or refused
(the GraphpruneError's first sentence). Any other exception is printed and makes the exit
status 1: it is a bug.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("GRAPHPRUNE_PROGRESS", "0")
import graphprune as gp  # noqa: E402
from graphprune.api.onnx_models import probe_inputs  # noqa: E402
from graphprune.errors import GraphpruneError  # noqa: E402
from graphprune.frontends.onnx_lower import input_dims, load_model  # noqa: E402

CORPUS = Path(os.environ.get("GRAPHPRUNE_CORPUS") or Path.home() / ".cache" / "graphprune" / "corpus")


def _feeds(path: str, entry: dict) -> dict | None:
    if not entry.get("values"):
        return None
    model = load_model(path)
    feeds = probe_inputs(model, dims=input_dims(model, entry["input_shapes"]))
    for name, value in entry["values"].items():
        feeds[name] = np.full(feeds[name].shape, value, dtype=feeds[name].dtype)
    return feeds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    a = ap.parse_args()
    manifest = CORPUS / "manifest.json"
    if not manifest.is_file():
        print(f"error: {manifest} does not exist; run tools/fetch_corpus.py first", file=sys.stderr)
        return 2
    rows, bugs = [], 0
    warnings.simplefilter("ignore")
    for entry in json.loads(manifest.read_text()):
        row = {k: entry.get(k) for k in ("id", "requirement", "exporter", "kind")}
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                r = gp.prune_onnx(entry["path"], Path(tmp) / "out.onnx", ratio=a.ratio,
                                  input_shapes=entry["input_shapes"], inputs=_feeds(entry["path"], entry),
                                  measure_latency=False)
                row.update(outcome="pruned", params=[r.params_before, r.params_after], macs=[r.macs_before, r.macs_after],
                           oracle=r.oracle.scaled_diff, groups=len(r.oracle.checked_groups))
            except GraphpruneError as exc:
                row.update(outcome="refused", reason=str(exc).split(". ")[0][:300])
            except Exception as exc:  # a bug: say so loudly
                bugs += 1
                row.update(outcome="BUG", reason=f"{type(exc).__name__}: {exc}"[:300])
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(f"{row['id']:<20} {row['outcome']}", flush=True)
    print()
    print("| model | exporter | kind | outcome | params | MACs | oracle (scaled) | time |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["outcome"] == "pruned":
            (p0, p1), (m0, m1) = r["params"], r["macs"]
            print(f"| {r['id']} | {r['exporter']} | {r['kind']} | pruned, {r['groups']} groups | "
                  f"{p0 / 1e6:.2f}M -> {p1 / 1e6:.2f}M (-{1 - p1 / p0:.0%}) | "
                  f"{m0 / 1e6:.0f}M -> {m1 / 1e6:.0f}M (-{1 - m1 / max(m0, 1):.0%}) | {r['oracle']:.1e} | {r['seconds']} s |")
        else:
            print(f"| {r['id']} | {r['exporter']} | {r['kind']} | {r['outcome']}: {r['reason']} | | | | {r['seconds']} s |")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"ratio": a.ratio, "rows": rows}, indent=1) + "\n")
    return 1 if bugs else 0


if __name__ == "__main__":
    sys.exit(main())
