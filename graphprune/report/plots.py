"""Pictures of a prune: where the budget went, layer by layer.

matplotlib is imported here only (the ``report`` extra); nothing else in graphprune needs it.
"""
from __future__ import annotations

from pathlib import Path


def _matplotlib():
    try:
        import matplotlib
    except ImportError as exc:  # an optional dependency: say how to get it
        raise ImportError("plots need matplotlib: pip install 'graphprune[report]'") from exc
    matplotlib.use("Agg")  # files, never a window
    import matplotlib.pyplot as plt

    return plt


def layer_plot(report, path: str | Path, title: str = "") -> Path:
    """A bar per weight (graph order): the share of its output channels kept, a weight removed
    with its residual block at 0 in red; the budget and totals in the title. Returns ``path``."""
    plt = _matplotlib()
    layers = [(name, b, a) for name, b, a in report.layers if b and b[0]]
    if not layers:
        raise ValueError("the report lists no weight matrix or kernel to plot")
    kept = [a[0] / b[0] for _, b, a in layers]
    colors = ["tab:red" if k == 0 else "tab:blue" if k < 1 else "tab:gray" for k in kept]
    fig, ax = plt.subplots(figsize=(max(7.5, min(18, 4 + 0.06 * len(layers))), 4.4))
    # a removed weight shows as a full red bar: gone, not small
    ax.bar(range(len(layers)), [k if k > 0 else 1 for k in kept], color=colors, width=0.85)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("output channels kept")
    ax.set_xlabel("weights in graph order")
    step = max(1, len(layers) // 24)
    ax.set_xticks(range(0, len(layers), step), [layers[i][0] for i in range(0, len(layers), step)],
                  rotation=75, fontsize=6, ha="right")
    pct = lambda a, b: f"{100 * (a - b) / b:+.1f}%" if b else "n/a"  # noqa: E731
    head = title or "kept width per layer"
    sub = (f"params {report.params_before:,} -> {report.params_after:,} ({pct(report.params_after, report.params_before)}), "
           f"MACs {pct(report.macs_after, report.macs_before)}")
    if report.blocks is not None:
        sub += f", residual blocks removed {report.blocks[0]} of {report.blocks[1]}"
    ax.set_title(f"{head}\n{sub}", fontsize=9)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color="tab:gray", label="unchanged"), Patch(color="tab:blue", label="narrowed"),
                       Patch(color="tab:red", label="removed with its block")], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.005, 1.0))  # beside the bars, never over them
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def totals_plot(report, path: str | Path) -> Path:
    """Parameters, MACs and (where measured) latency after pruning, as a share of before."""
    plt = _matplotlib()
    items = [("parameters", report.params_before, report.params_after, "{:,.0f}"),
             ("MACs", report.macs_before, report.macs_after, "{:,.3g}")]
    if report.latency_before_ms and report.latency_after_ms:
        items.append(("latency (ms)", report.latency_before_ms, report.latency_after_ms, "{:.3f}"))
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    for k, (name, before, after, fmt) in enumerate(items):
        share = after / before if before else 1.0
        ax.barh(k, 1.0, color="tab:gray", alpha=0.35, height=0.6)
        ax.barh(k, share, color="tab:green", height=0.6)
        ax.text(1.01, k, f"{fmt.format(before)} -> {fmt.format(after)} ({share:.0%})", va="center", fontsize=8)
    ax.set_yticks(range(len(items)), [i[0] for i in items])
    ax.set_xlim(0, 1.75)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "25%", "50%", "75%", "100%"])
    ax.invert_yaxis()
    ax.set_title("after pruning, as a share of before", fontsize=9)
    return _save(fig, plt, path)


def importance_plot(report, path: str | Path) -> Path:
    """Histogram of every unit's importance divided by its group's mean: removed vs kept."""
    import numpy as np

    plt = _matplotlib()
    kept, removed = [], []
    pruned = report.plan.pruned if report.plan is not None else {}
    for gid, s in report.scores.items():
        s = np.asarray(s, dtype=np.float64)
        if not s.size:
            continue
        mean = float(np.abs(s).mean()) or 1.0
        mask = np.zeros(s.size, dtype=bool)
        mask[list(pruned.get(gid, []))] = True
        removed.append(s[mask] / mean)
        kept.append(s[~mask] / mean)
    if not kept:
        raise ValueError("the report holds no importance scores to plot")
    kept, removed = np.concatenate(kept), np.concatenate(removed) if removed else np.zeros(0)
    every = np.concatenate([kept, removed])
    hi = float(np.quantile(every, 0.99)) if every.size else 1.0
    lo = float(min(0.0, every.min()))
    bins = np.linspace(lo, max(hi, lo + 1e-6), 50)
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    ax.hist(np.clip(kept, lo, hi), bins=bins, color="tab:blue", alpha=0.7, label=f"kept ({kept.size:,})")
    if removed.size:
        ax.hist(np.clip(removed, lo, hi), bins=bins, color="tab:red", alpha=0.7, label=f"removed ({removed.size:,})")
    ax.set_xlabel(f"importance / group mean ({report.importance or 'criterion'}; clipped at the 99th percentile)")
    ax.set_ylabel("units (channels, heads)")
    ax.legend(fontsize=8)
    ax.set_title("what the criterion ranked, and where the cut fell", fontsize=9)
    return _save(fig, plt, path)


def groups_plot(report, path: str | Path) -> Path:
    """Units kept and removed per kind of group (heads, FFN units, channels, ...), and blocks."""
    plt = _matplotlib()
    by_kind: dict[str, list[int]] = {}
    for gid, (k, n) in report.kept.items():
        kind = report.kinds.get(gid, "channel")
        acc = by_kind.setdefault(kind, [0, 0, 0])
        acc[0] += k
        acc[1] += n - k
        acc[2] += 1
    if report.blocks is not None:
        by_kind["residual blocks"] = [report.blocks[1] - report.blocks[0], report.blocks[0], report.blocks[1]]
    if not by_kind:
        raise ValueError("the report holds no groups to plot")
    names = sorted(by_kind)
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.45 * len(names)))
    for k, name in enumerate(names):
        keep, gone, count = by_kind[name]
        total = keep + gone or 1
        ax.barh(k, keep / total, color="tab:blue", height=0.6)
        ax.barh(k, gone / total, left=keep / total, color="tab:red", height=0.6)
        ax.text(1.01, k, f"{gone:,} of {total:,} removed ({count} group{'s' if count != 1 else ''})", va="center",
                fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(0, 1.6)
    ax.set_xticks([0, 0.5, 1.0], ["0", "50%", "100%"])
    ax.invert_yaxis()
    ax.set_title("units per kind of group: kept (blue) and removed (red)", fontsize=9)
    return _save(fig, plt, path)
