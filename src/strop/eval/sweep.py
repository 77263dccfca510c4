"""Adapter-scale sweep: task gain against forgetting along the line from the base to the tuned model.

A LoRA update is ``scale x B A`` added to each frozen weight, so multiplying
the scale by s in [0, 1] walks straight from the base (s = 0) to the tuned
model (s = 1): the weight-space interpolation WiSE-FT picks its point on,
at the price of evaluations only (no retraining, no second model in
memory). Each scale is scored like any other system (the task's metrics on
the eval set, general questions when given) and on the general text; the
chosen point is the best task metric among the scales whose general-text
perplexity stays within the forgetting budget, the smaller scale on a tie
(it changes the base less). ``apply_scale`` then writes the choice into the
run's adapter (``lora_alpha``), so generate, serve, merge and export all use
it; the unscaled value is kept in ``strop_run.json`` and a later apply starts
from it.

Only plain LoRA adapters scale linearly: DoRA renormalises each column after
the update and IA3, prompt and prefix tuning have no such scale, so those
runs get a one-line error.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import StropError

DEFAULT_SCALES = "0.25,0.5,0.75"
DEFAULT_BUDGET = 0.05  # general-text perplexity may rise at most this much over the base's
TASK_METRICS = ("keyword_hit_rate", "accuracy", "rougeL", "chrf", "bleu")  # the first one present is the task's


def parse_scales(text: str) -> list[float]:
    try:
        scales = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise StropError(f"--scales: {text!r} is not a comma-separated list of numbers (e.g. {DEFAULT_SCALES})") from None
    if not scales or any(not 0 < s < 1 for s in scales):
        raise StropError(f"--scales: each scale must lie strictly between 0 (the base) and 1 (the tuned model, "
                         f"always measured); got {text!r}")
    return scales


def adapter_dir(run_root: Path) -> Path:
    return Path(run_root) / "final"


def check_sweepable(run_root: Path) -> None:
    """A one-line error unless the run's final weights are a plain LoRA adapter."""
    cfg_file = adapter_dir(run_root) / "adapter_config.json"
    if not cfg_file.is_file():
        raise StropError(f"--scales: {run_root} has no LoRA adapter in final/ (a merged or fully fine-tuned model "
                         "has no adapter scale to sweep)")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("peft_type") != "LORA" or cfg.get("use_dora"):
        kind = "DoRA" if cfg.get("use_dora") else cfg.get("peft_type", "unknown")
        raise StropError(f"--scales: needs a plain LoRA adapter ({kind} does not scale linearly towards the base)")


def task_metric(scores: dict) -> str | None:
    return next((m for m in TASK_METRICS if isinstance(scores.get(m), (int, float))), None)


def lora_scalings(model) -> list[tuple[dict, dict]]:
    """(each LoRA layer's live scaling dict, a copy of its trained values)."""
    return [(m.scaling, dict(m.scaling)) for m in model.modules() if isinstance(getattr(m, "scaling", None), dict)]


def set_scale(scalings: list[tuple[dict, dict]], s: float) -> None:
    for live, trained in scalings:
        for name, value in trained.items():
            live[name] = value * s


def sweep(engine, task, scales: list[float]) -> list[dict]:
    """Score the tuned run loaded in ``engine`` at each scale: its task scores and its general-text perplexity."""
    from .forgetting import general_paragraphs, general_text_nll
    from .scores import nll_stats
    from .systems import Spec, score_system

    scalings = lora_scalings(engine.model)
    if not scalings:
        raise StropError(f"--scales: no LoRA layer found in {engine.name}'s model")
    points = []
    try:
        for s in scales:
            set_scale(scalings, s)
            result = score_system(engine, Spec(f"tuned@{s:g}", engine.name), task)
            nll, tokens = general_text_nll(engine.model, engine.tok, general_paragraphs(), task.max_length)
            points.append({"scale": s, "scores": result.scores,
                           "general_text_perplexity": nll_stats(nll, tokens)["perplexity"].value()})
    finally:
        set_scale(scalings, 1.0)
    return points


def summarise(points: list[dict], systems: dict, general_text: dict, budget: float) -> dict:
    """Add the base (0) and tuned (1) ends, each point's perplexity change, and the chosen scale."""
    base_ppl = general_text["base"]["perplexity"]
    ends = [{"scale": 0.0, "scores": systems["base"], "general_text_perplexity": base_ppl},
            {"scale": 1.0, "scores": systems["tuned"], "general_text_perplexity": general_text["tuned"]["perplexity"]}]
    metric = task_metric(systems["tuned"])
    rows = []
    for p in sorted([ends[0], *points, ends[1]], key=lambda p: p["scale"]):
        change = p["general_text_perplexity"] / base_ppl - 1
        rows.append({"scale": p["scale"], "task_metric": p["scores"].get(metric) if metric else None,
                     "general_hit_rate": p["scores"].get("general_hit_rate"),
                     "general_text_perplexity": p["general_text_perplexity"], "perplexity_change": change,
                     "within_budget": bool(change <= budget)})
    out = {"metric": metric, "budget": budget, "points": rows, "chosen": None}
    candidates = [r for r in rows if r["within_budget"] and r["scale"] > 0 and r["task_metric"] is not None]
    if metric is None:
        out["why"] = "no task metric to choose by (keywords, labels or references)"
    elif not candidates:
        out["why"] = f"no scale keeps general-text perplexity within +{budget:.0%} of the base's"
    else:
        best = max(candidates, key=lambda r: (r["task_metric"], -r["scale"]))
        out["chosen"] = best["scale"]
        out["why"] = (f"the best {metric} ({best['task_metric']:.3g}) among the scales within +{budget:.0%} "
                      "general-text perplexity; the smaller scale on a tie")
    return out


def apply_scale(run_root: Path, scale: float) -> dict:
    """Write ``scale`` into the run's adapter (lora_alpha and alpha_pattern), from the unscaled values."""
    check_sweepable(run_root)
    final = adapter_dir(run_root)
    cfg_file, record_file = final / "adapter_config.json", final / "strop_run.json"
    cfg = json.loads(cfg_file.read_text())
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    unscaled = record.get("unscaled_lora", {"lora_alpha": cfg["lora_alpha"], "alpha_pattern": cfg.get("alpha_pattern") or {}})
    cfg["lora_alpha"] = unscaled["lora_alpha"] * scale
    cfg["alpha_pattern"] = {k: v * scale for k, v in unscaled["alpha_pattern"].items()}
    record.update(unscaled_lora=unscaled, adapter_scale=scale)
    for path, data in ((record_file, record), (cfg_file, cfg)):  # the record first: the unscaled value is never lost
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)
    return {"adapter_scale": scale, "lora_alpha": cfg["lora_alpha"], "unscaled_lora_alpha": unscaled["lora_alpha"]}


def sweep_lines(sweep_result: dict) -> str:
    """The sweep as printed by `strop eval`: one line per scale, then the choice."""
    metric = sweep_result["metric"] or "task metric"
    lines = [f"adapter scale sweep ({metric} against general-text perplexity, budget +{sweep_result['budget']:.0%}):"]
    for r in sweep_result["points"]:
        value = "-" if r["task_metric"] is None else f"{r['task_metric']:.3f}"
        mark = " <- chosen" if r["scale"] == sweep_result["chosen"] else ""
        lines.append(f"  scale {r['scale']:<5g} {metric} {value}  perplexity {r['general_text_perplexity']:.2f} "
                     f"({r['perplexity_change']:+.1%}){'' if r['within_budget'] else ' over budget'}{mark}")
    chosen = sweep_result["chosen"]
    lines.append(f"  chosen scale: {chosen:g} ({sweep_result['why']})" if chosen is not None
                 else f"  no scale chosen: {sweep_result['why']}")
    if "applied" in sweep_result:
        a = sweep_result["applied"]
        lines.append(f"  applied: final/adapter_config.json lora_alpha {a['unscaled_lora_alpha']:g} -> {a['lora_alpha']:g}")
    return "\n".join(lines)
