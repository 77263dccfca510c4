"""PNG plots for the eval report: metric bars with intervals, confusion matrices, bias gaps.

Figure API with the Agg canvas, so pyplot's global backend is left alone.
Each function draws numbers it is given and returns the file name written.
"""
from __future__ import annotations

from pathlib import Path


def figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save(fig, out_png) -> str:
    """Lay ``fig`` out and write it to ``out_png`` (its folder made if missing); the path written."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_png)
    return str(out_png)


def metric_bars(systems: dict[str, dict], intervals: dict[str, dict], metrics: list[str], out_png: Path) -> str | None:
    """One panel per metric, one bar per system, 95% interval as an error bar."""
    metrics = [m for m in metrics if any(m in s for s in systems.values())]
    if not metrics:
        return None
    fig = figure(min(2.2 * len(metrics) + 1, 14), 3.2)
    names = list(systems)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        vals = [systems[s].get(metric, float("nan")) for s in names]
        lows, highs = [], []
        for s, v in zip(names, vals):
            ci = intervals.get(s, {}).get(metric, [v, v])
            lows.append(max(v - ci[0], 0))
            highs.append(max(ci[1] - v, 0))
        ax.bar(range(len(names)), vals, yerr=[lows, highs], capsize=4, color="#6b8fd6")
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        ax.set_title(metric, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png)
    return out_png.name


def confusion(matrix: list[list[int]], rows: list[str], cols: list[str], title: str, out_png: Path) -> str:
    fig = figure(1.2 * len(cols) + 2, 1.0 * len(rows) + 1.6)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(cols)), cols, rotation=30, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png)
    return out_png.name


def bias_gaps(change: dict, measure: str, out_png: Path) -> str:
    """Base vs tuned mean gap per attribute with 95% intervals."""
    attrs = list(change)
    fig = figure(7.2, 3.4)
    ax = fig.add_subplot()
    width = 0.38
    for k, system in enumerate(("base", "tuned")):
        vals = [change[a][measure][system] for a in attrs]
        cis = [change[a][measure][f"{system}_ci"] for a in attrs]
        err = [[max(v - c[0], 0) for v, c in zip(vals, cis)], [max(c[1] - v, 0) for v, c in zip(vals, cis)]]
        ax.bar([i + (k - 0.5) * width for i in range(len(attrs))], vals, width, yerr=err, capsize=3, label=system)
    ax.set_xticks(range(len(attrs)), attrs, fontsize=8)
    ax.set_ylabel(f"{measure} (nats)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    return out_png.name


def tradeoff(sweep: dict, out_png: Path) -> str:
    """Task metric against general-text perplexity change, one point per adapter scale, the choice starred."""
    rows = [r for r in sweep["points"] if r["task_metric"] is not None]
    fig = figure(6.4, 3.8)
    ax = fig.add_subplot()
    xs = [100 * r["perplexity_change"] for r in rows]
    ys = [r["task_metric"] for r in rows]
    ax.plot(xs, ys, "-o", color="#6b8fd6", zorder=2)
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(f"{r['scale']:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if r["scale"] == sweep["chosen"]:
            ax.plot([x], [y], marker="*", markersize=16, color="#d9822b", zorder=3, label=f"chosen ({r['scale']:g})")
    ax.axvline(100 * sweep["budget"], color="#999", linestyle="--", label=f"budget +{sweep['budget']:.0%}")
    ax.set_xlabel("general-text perplexity change vs base (%)")
    ax.set_ylabel(sweep["metric"] or "task metric")
    ax.set_title("adapter scale: task gain against forgetting", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png)
    return out_png.name
