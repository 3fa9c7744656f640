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
                       Patch(color="tab:red", label="removed with its block")], fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
