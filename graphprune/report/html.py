"""``--report DIR``: report.json for machines, report.html for people.

The HTML page is self-contained (plots as inline PNG, no script, no network): it opens from
a mail attachment as well as from disk. Plots: totals before/after, kept width per layer,
the importance distribution with the cut, units per kind of group; then the tables.
"""
from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path

from ..util.atomic import write_bytes_atomic

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { padding: 2px 10px; text-align: left; }
th { background: #f2f2f2; } tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #eee; } .pass { color: #17803d; } .fail { color: #b00020; }
pre { background: #f7f7f7; padding: 0.8em; font-size: 0.8em; white-space: pre-wrap; }
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(head: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def render_html(report, title: str, tmp: Path) -> str:
    from . import plots

    parts = [f"<h1>{html.escape(title)}</h1>"]
    pct = lambda a, b: f"{100 * (a - b) / b:+.1f}%" if b else "n/a"  # noqa: E731
    rows = [["parameters", f"{report.params_before:,}", f"{report.params_after:,}",
             pct(report.params_after, report.params_before)],
            ["MACs", f"{report.macs_before:,}", f"{report.macs_after:,}", pct(report.macs_after, report.macs_before)]]
    if report.latency_before_ms and report.latency_after_ms:
        given = report.latency.given_ms if report.latency is not None else None
        rows.append([f"latency ({report.runtime}, 1 thread{', the original rewritten for onnxruntime' if given else ''})",
                     f"{report.latency_before_ms:.3f} ms", f"{report.latency_after_ms:.3f} ms",
                     pct(report.latency_after_ms, report.latency_before_ms)])
        if given:
            rows.append([f"latency ({report.runtime}, 1 thread, the original file as given)", f"{given:.3f} ms",
                         f"{report.latency_after_ms:.3f} ms", pct(report.latency_after_ms, given)])
    if report.blocks is not None:
        rows.append(["residual blocks", report.blocks[1], report.blocks[1] - report.blocks[0],
                     pct(report.blocks[1] - report.blocks[0], report.blocks[1])])
    parts.append(_table(["", "before", "after", "change"], rows))
    if report.oracle is not None:
        cls = {"PASS": "pass", "FAIL": "fail"}.get(report.oracle.verdict, "")  # PARTIAL / NOT CHECKED: no green
        parts.append(f'<p class="{cls}">{html.escape(str(report.oracle))}</p>')
    if report.budget is not None:
        parts.append(f"<p>{html.escape(str(report.budget))}</p>")
    held = report.compensation.heldout if report.compensation is not None else None
    if held is not None:  # the one figure about inputs the refit never saw: next to the totals, red when it warns
        parts.append(f'<p class="{"fail" if held.warning() else ""}">{html.escape(held.text())}</p>')
    figures = [("Before and after", plots.totals_plot, "totals"),
               ("Kept width per layer", plots.layer_plot, "layers"),
               ("Importance distribution", plots.importance_plot, "importance"),
               ("Group structure", plots.groups_plot, "groups")]
    for heading, fn, name in figures:
        try:
            png = fn(report, tmp / f"{name}.png")
        except ValueError as exc:  # nothing of that kind to draw (no scores, no layers)
            parts.append(f"<h2>{heading}</h2><p>{html.escape(str(exc))}</p>")
            continue
        parts.append(f"<h2>{heading}</h2>{_img(png, heading)}")
    if report.kept:
        g_rows = [[g, getattr(report, "names", {}).get(g, ""), report.kinds.get(g, ""), n, k, f"{k / n:.0%}"]
                  for g, (k, n) in sorted(report.kept.items())]
        parts.append("<h2>Groups</h2>" + _table(["group", "first member", "kind", "size", "kept", "share kept"],
                                                g_rows[:400]))
    if report.layers:
        l_rows = [[n, " x ".join(map(str, b)), " x ".join(map(str, a))] for n, b, a in report.layers]
        parts.append("<h2>Layers</h2>" + _table(["weight", "before", "after"], l_rows))
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    parts.append(f"<h2>Full report</h2><pre>{html.escape(str(report))}</pre>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


def write_report(report, directory: str | Path, title: str = "graphprune report") -> Path:
    """Write ``report.json`` and ``report.html`` into ``directory``; returns the HTML path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(directory / "report.json",
                       json.dumps(report.to_dict(), indent=1, sort_keys=True, default=str).encode())
    with tempfile.TemporaryDirectory() as tmp:
        page = render_html(report, title, Path(tmp))
    return write_bytes_atomic(directory / "report.html", page.encode())
