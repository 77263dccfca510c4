"""Learning-curve summaries and the plot: labels needed vs random, area under the curve."""
from __future__ import annotations

from pathlib import Path


def mean_curve(curves_by_seed: dict[str, list]) -> tuple[list[int], list[float], list[float]]:
    """Label counts, mean and standard deviation of the metric across seeds."""
    import numpy as np

    runs = list(curves_by_seed.values())
    x = [n for n, _ in runs[0]]
    ys = np.array([[acc for _, acc in run] for run in runs])  # (seeds, points)
    return x, ys.mean(axis=0).tolist(), ys.std(axis=0).tolist()


def aulc(x: list[int], y: list[float]) -> float:
    """Area under the learning curve, normalised by the label range (so it reads as a mean metric)."""
    area = sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1))
    return area / (x[-1] - x[0]) if x[-1] > x[0] else y[0]


def labels_to_reach(x: list[int], y: list[float], target: float) -> int | None:
    """The first measured label count whose mean metric is at least ``target`` (None: never)."""
    return next((n for n, v in zip(x, y) if v >= target - 1e-12), None)


def summarize(curves: dict[str, dict[str, list]]) -> dict:
    """Per strategy: mean curve, final metric, AULC, labels to reach random's final metric."""
    if "random" not in curves:
        target, random_labels = None, None
    else:
        rx, ry, _ = mean_curve(curves["random"])
        target, random_labels = ry[-1], rx[-1]
    out = {"random_final": target, "random_labels": random_labels, "strategies": {}}
    for name, by_seed in curves.items():
        x, y, sd = mean_curve(by_seed)
        need = labels_to_reach(x, y, target) if target is not None else None
        out["strategies"][name] = {
            "labels": x, "mean": y, "std": sd, "final": y[-1], "final_std": sd[-1], "aulc": aulc(x, y),
            "labels_to_random_final": need,
            "fraction_of_random_labels": need / random_labels if need is not None and random_labels else None,
        }
    return out


def format_summary(summary: dict) -> str:
    """A markdown table, as printed by `strop al loop` and pasted into the docs."""
    lines = ["| strategy | final accuracy (mean ± sd) | AULC | labels to reach random's final | share of random's labels |",
             "| --- | --- | --- | --- | --- |"]
    for name, s in summary["strategies"].items():
        need = s["labels_to_random_final"]
        frac = s["fraction_of_random_labels"]
        lines.append(f"| {name} | {s['final']:.3f} ± {s['final_std']:.3f} | {s['aulc']:.3f} | "
                     f"{need if need is not None else 'not reached'} | {f'{frac:.0%}' if frac is not None else '-'} |")
    return "\n".join(lines)


def plot_curves(summary: dict, out_png: str | Path, title: str = "") -> str:
    """Mean accuracy vs labels per strategy (shaded ±1 sd), random dashed, its final level dotted."""
    from ..report.plots import figure, save

    fig = figure(7.2, 4.2)  # the Figure API leaves pyplot's global backend alone
    ax = fig.add_subplot()
    for name, s in summary["strategies"].items():
        lo = [m - d for m, d in zip(s["mean"], s["std"])]
        hi = [m + d for m, d in zip(s["mean"], s["std"])]
        style = "--" if name == "random" else "-"
        line, = ax.plot(s["labels"], s["mean"], style, marker="o", markersize=3, label=name)
        ax.fill_between(s["labels"], lo, hi, color=line.get_color(), alpha=0.12)
    if summary.get("random_final") is not None:
        ax.axhline(summary["random_final"], color="grey", linestyle=":", linewidth=1, label="random's final")
    ax.set_xlabel("labelled examples")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, out_png)
