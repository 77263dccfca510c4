"""The `strop eval` page of a preference / RL run: headline numbers, training curves, judge verdicts.

Formats preference.json and draws curves.PANELS from metrics.jsonl; computes nothing.
"""
from __future__ import annotations

import html
from pathlib import Path

from ..report.curves import plot_curves
from ..report.html import fmt, write_report


def _systems(result: dict) -> dict[str, dict]:
    """Headline numbers of preference.json as a base/tuned table."""
    systems: dict[str, dict] = {}
    for name in ("base", "tuned"):
        part = result.get(name) or {}
        row = {k: part[k] for k in ("accuracy", "mean_margin", "pairs") if k in part}
        for func, v in (part.get("rewards") or {}).items():
            row[f"reward {func.split(':')[-1]}"] = v["mean"]
        if "reward_model" in part:
            row["reward model score"] = part["reward_model"]["mean"]
        if row:
            systems[name] = row
    if "reward_model" in result:
        systems["reward model"] = {k: result["reward_model"][k] for k in ("accuracy", "mean_margin", "pairs")}
    return systems


def _judge_section(j: dict | None) -> str:
    if not j:
        return ""
    prompt = f"<h3>Judge prompt</h3><pre>{html.escape(j.get('prompt', ''))}</pre>"
    if "skipped" in j:
        return f"<h2>LLM judge</h2><p class='skip'>SKIPPED: {html.escape(j['skipped'])}</p>{prompt}"
    if j.get("mode") == "pairwise":
        from .pairwise import sentence

        body = f"<p>{html.escape(sentence(j))}</p>"
    else:
        body = "<p>mean grade (1-5): " + html.escape(", ".join(f"{s} {fmt(m)}" for s, m in j["mean"].items())) + "</p>"
    return (f"<h2>LLM judge ({html.escape(j.get('mode', ''))})</h2>"
            f"<p class='meta'>{html.escape(str(j.get('model')))} at {html.escape(str(j.get('endpoint')))}</p>{body}"
            + prompt)


def write_preference_report(out: Path, result: dict, train_rows: list[dict]) -> Path:
    """eval/report.html for a preference / RL run: headline numbers, training curves, judge."""
    out = Path(out)
    images = plot_curves(train_rows, out)
    curves = "".join(f'<img src="{html.escape(n)}" alt="{html.escape(n[:-4])}" width="720"><br>' for n in images)
    sections = []
    if result.get("kl_from_reference") is not None:
        kl = fmt(result["kl_from_reference"])
        sections.append(f"<p>KL(tuned || base) per token on the held-out answers: {kl}</p>")
    if curves:
        sections.append("<h2>Training curves (metrics.jsonl)</h2>" + curves)
    sections.append(_judge_section(result.get("judge")))
    metrics = {"systems": _systems(result), "target": result.get("run"), "data": result.get("data")}
    title = f"strop eval: {result.get('objective')} run {result.get('run')}"
    return write_report(out / "report.html", title, metrics, [], None, sections=[s for s in sections if s],
                        examples_html=_judge_examples(result.get("judge")))


def _judge_examples(j: dict | None) -> str:
    rows = (j or {}).get("examples") or []
    if not rows:
        return "<p class='meta'>No generated answers (run with --judge to compare tuned and base answers).</p>"
    if "tuned" not in rows[0]:  # rubric: one graded row per system and question
        body = "".join(f"<tr><td><pre>{html.escape(r['prompt'])}</pre></td><td>{html.escape(r['system'])}</td>"
                       f"<td><pre>{html.escape(r['prediction'])}</pre></td>"
                       f"<td>{html.escape(str(r.get('judge')))}</td></tr>"
                       for r in rows)
        return f"<table><tr><th>question</th><th>system</th><th>answer</th><th>grade</th></tr>{body}</table>"
    body = "".join(f"<tr><td><pre>{html.escape(r['question'])}</pre></td><td><pre>{html.escape(r['tuned'])}</pre></td>"
                   f"<td><pre>{html.escape(r['base'])}</pre></td><td>{html.escape(str(r.get('outcome')))}"
                   f" (tuned shown as {html.escape(str(r.get('shown_as')))})</td></tr>" for r in rows)
    return f"<table><tr><th>question</th><th>tuned</th><th>base</th><th>judge, for tuned</th></tr>{body}</table>"
