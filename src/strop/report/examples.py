"""Per-example table with each system's answer side by side, in several orders.

Each order is a pre-rendered copy switched by CSS ``:target`` (no script):
worst first (by the last system's score), biggest drop against the first
system, and file order. The score of an answer is its correctness for
classification, else its keyword hit, else ROUGE-L against the reference.
"""
from __future__ import annotations

import html


def _score(row: dict) -> float | None:
    for key in ("correct", "hit"):
        if row.get(key) is not None:
            return float(row[key])
    return row.get("rougeL")


def _group(predictions: list[dict]) -> tuple[list[str], list[dict]]:
    systems: list[str] = []
    grouped: dict[tuple, dict] = {}
    for row in predictions:
        system = row.get("system", "model")
        if system not in systems:
            systems.append(system)
        entry = grouped.setdefault((row.get("set", ""), row.get("where", "")), {"row": row, "answers": {}})
        entry["answers"][system] = row
    return systems, list(grouped.values())


def _cell(ans: dict | None) -> str:
    if ans is None:
        return "<td>-</td>"
    s = _score(ans)
    mark = f'<span class="{"hit" if s and s >= 0.5 else "miss"}">{s:.2f}</span> ' if s is not None else ""
    extra = f' <span class="meta">label: {html.escape(str(ans["parsed"]))}</span>' if "parsed" in ans else ""
    return f"<td>{mark}{extra}<pre>{html.escape(str(ans.get('prediction', '')))}</pre></td>"


def _table(systems: list[str], entries: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(s)}</th>" for s in systems)
    rows = []
    for e in entries:
        row = e["row"]
        label = html.escape(f"{row.get('set', '')} {row.get('where', '')}".strip())
        rows.append(f'<tr><td class="meta">{label}</td><td><pre>{html.escape(str(row.get("prompt", "")))}</pre></td>'
                    f'<td><pre>{html.escape(str(row.get("reference", "")))}</pre></td>'
                    + "".join(_cell(e["answers"].get(s)) for s in systems) + "</tr>")
    return f"<table><tr><th>example</th><th>prompt</th><th>reference</th>{head}</tr>{''.join(rows)}</table>"


def _key(entry: dict, system: str) -> float:
    s = _score(entry["answers"].get(system, {}))
    return 2.0 if s is None else s


def sortable_examples(predictions: list[dict]) -> str:
    systems, entries = _group(predictions)
    last, first = systems[-1], systems[0]
    worst = sorted(entries, key=lambda e: _key(e, last))
    views = [("view-file", "file order", entries)]
    if len(systems) > 1:
        drop = sorted(entries, key=lambda e: _key(e, last) - _key(e, first))
        views.insert(0, ("view-drop", f"biggest drop, {last} vs {first}", drop))
    views.append(("view-worst", f"worst {last} first", worst))  # last: shown unless another is targeted
    links = " | ".join(f'<a href="#{vid}">{html.escape(name)}</a>' for vid, name, _ in reversed(views))
    body = "".join(f'<div class="view" id="{vid}"><p class="meta">sorted: {html.escape(name)}</p>'
                   f"{_table(systems, rows)}</div>" for vid, name, rows in views)
    return f'<p class="meta">order: {links}</p>{body}'
