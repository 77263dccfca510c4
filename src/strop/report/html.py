"""Self-contained HTML reports, the loss-curve plot and a terminal table.

The page has no external assets (inline CSS, the plot referenced by a path
relative to the page) so an eval/ folder copied elsewhere still renders.
This module formats numbers it is given; it never computes metrics.
"""
from __future__ import annotations

import html
from pathlib import Path

# Which way is better, for highlighting only; unnamed metrics count as higher-is-better.
LOWER_IS_BETTER = {"loss", "perplexity", "eval_loss", "general_text_perplexity"}
NOT_COMPARED = {"tokens", "n", "unparsed"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem;color:#222;max-width:1200px}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.best{background:#d8f5d0;font-weight:600}
.hit{color:#1a7f37}.miss{color:#b42318}.meta{color:#666;font-size:.85rem}
pre{white-space:pre-wrap;margin:0;font-family:inherit}
.ci{color:#666;font-size:.8rem;font-weight:400}.flag{color:#b42318;font-weight:600}.skip{color:#8a6d00}
.view{display:none}.view:target{display:block}.view:target~#view-worst{display:none}#view-worst{display:block}
"""


def fmt(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _systems(metrics: dict) -> dict[str, dict]:
    """Accept a metrics.json dict ({"systems": ...}) or the systems mapping itself."""
    return metrics.get("systems", metrics)


def _metric_names(systems: dict[str, dict]) -> list[str]:
    names: list[str] = []
    for values in systems.values():
        names += [k for k in values if k not in names]
    return names


def _best(name: str, values: list) -> object | None:
    """The value to highlight, or None when there is nothing to prefer."""
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if name in NOT_COMPARED or len(nums) < 2 or len(set(nums)) == 1:
        return None
    return min(nums) if name in LOWER_IS_BETTER else max(nums)


def _metrics_table(metrics: dict) -> str:
    systems = _systems(metrics)
    head = "".join(f"<th>{html.escape(s)}</th>" for s in systems)
    rows = []
    for name in _metric_names(systems):
        values = [systems[s].get(name) for s in systems]
        best = _best(name, values)
        cells = []
        for system, v in zip(systems, values):
            cls = "num best" if best is not None and v == best else "num"
            ci = metrics.get("intervals", {}).get(system, {}).get(name)
            span = f' <span class="ci">[{fmt(ci[0])}, {fmt(ci[1])}]</span>' if ci and v is not None else ""
            cells.append(f'<td class="{cls}">{html.escape(fmt(v)) if v is not None else "-"}{span}</td>')
        rows.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"


def _examples_table(predictions: list[dict]) -> str:
    systems: list[str] = []
    grouped: dict[tuple, dict] = {}  # (set, where) -> first row + answers per system
    for row in predictions:
        system = row.get("system", "model")
        if system not in systems:
            systems.append(system)
        key = (row.get("set", ""), row.get("where", ""))
        entry = grouped.setdefault(key, {"row": row, "answers": {}})
        entry["answers"][system] = row
    head = "".join(f"<th>{html.escape(s)}</th>" for s in systems)
    out = []
    for (set_name, where), entry in grouped.items():
        row = entry["row"]
        cells = []
        for s in systems:
            ans = entry["answers"].get(s)
            if ans is None:
                cells.append("<td>-</td>")
                continue
            mark = ""
            if ans.get("hit") is not None:
                mark = '<span class="hit">&#10003; </span>' if ans["hit"] else '<span class="miss">&#10007; </span>'
            cells.append(f"<td>{mark}<pre>{html.escape(str(ans.get('prediction', '')))}</pre></td>")
        label = html.escape(f"{set_name} {where}".strip())
        out.append(
            f'<tr><td class="meta">{label}</td><td><pre>{html.escape(str(row.get("prompt", "")))}</pre></td>'
            f'<td><pre>{html.escape(str(row.get("reference", "")))}</pre></td>{"".join(cells)}</tr>'
        )
    return f"<table><tr><th>example</th><th>prompt</th><th>reference</th>{head}</tr>{''.join(out)}</table>"


def write_report(path: str | Path, title: str, metrics: dict, predictions: list[dict],
                 loss_curve_png: str | None, sections: list[str] | None = None,
                 examples_html: str | None = None) -> Path:
    """Write one self-contained HTML page: metrics table, loss curve, examples side by side.

    ``sections`` (HTML fragments) go between the loss curve and the examples;
    ``examples_html`` replaces the plain examples table.
    """
    path = Path(path)
    info = [f"{k}: {metrics[k]}" for k in ("target", "data", "n", "general") if metrics.get(k) is not None]
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style></head><body>',
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(" | ".join(info))}</p>' if info else "",
        "<h2>Metrics</h2>",
        _metrics_table(metrics),
        '<p class="meta">Highlighted: the better value (lower for loss and perplexity, higher otherwise).</p>',
    ]
    if loss_curve_png:
        parts += ["<h2>Loss curve</h2>", f'<img src="{html.escape(loss_curve_png)}" alt="training and eval loss" width="720">']
    parts += list(sections or [])
    parts += ["<h2>Examples</h2>", examples_html or _examples_table(predictions), "</body></html>"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(p for p in parts if p), encoding="utf-8")
    return path


def plot_loss_curve(metrics_rows: list[dict], out_png: str | Path) -> str | None:
    """Draw train ``loss`` and ``eval_loss`` against ``step``; None when there is nothing to draw."""
    train = [(r["step"], r["loss"]) for r in metrics_rows if "step" in r and isinstance(r.get("loss"), (int, float))]
    evals = [(r["step"], r["eval_loss"]) for r in metrics_rows if "step" in r and isinstance(r.get("eval_loss"), (int, float))]
    if not train and not evals:
        return None
    from .plots import figure, save

    fig = figure(7.2, 3.6)  # the Figure API with the Agg canvas leaves pyplot's global backend alone
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, out_png)


def format_table(metrics: dict) -> str:
    """A plain-text table, systems as columns, for the terminal."""
    systems = _systems(metrics)
    names = _metric_names(systems)
    header = ["metric", *systems]
    body = [[n, *(fmt(systems[s][n]) if n in systems[s] else "-" for s in systems)] for n in names]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in body)])
