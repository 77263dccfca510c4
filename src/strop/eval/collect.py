"""Turn raw per-system results into metrics.json sections, then write the outputs."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..core.errors import StropError
from ..core.rundir import RunDir
from .analysis import comparisons, intervals, verdicts
from .scores import nll_stats
from .stats import paired_comparison, resample_indices
from .systems import Spec, Task


def collect(raw: dict, specs: list[Spec], task: Task, opts, run: RunDir | None, **head) -> tuple[dict, list[dict]]:
    results = raw["systems"]
    stats = {name: r.stats for name, r in results.items()}
    _add_general_text(raw["general_text"], results, stats)
    predictions = [row for r in results.values() for row in r.rows]
    metrics: dict = {**{k: v for k, v in head.items() if v is not None}, "n": len(task.dataset),
                     "systems": {name: r.scores for name, r in results.items()}}
    judged = _pairwise(predictions, opts) if opts.judge_mode == "pairwise" else _judge(predictions, opts, stats)
    if judged:
        metrics["judge"] = judged
        for name, mean in judged.get("mean", {}).items():
            metrics["systems"][name]["judge_score"] = mean
    metrics["intervals"] = intervals(stats, opts.resamples, opts.seed)
    metrics["comparisons"] = comparisons(stats, opts.resamples, opts.seed)
    metrics["verdicts"] = verdicts(metrics["comparisons"])
    metrics["cost"] = _cost(results, run)
    metrics["general_text"] = _forgetting(raw["general_text"], opts)
    few = next((s.few_shot for s in specs if s.few_shot), None)
    if few:
        metrics["prompts"] = {"few_shot": few.text(), "k_shot": len(few.examples)}
    if task.labels:
        metrics["classification"] = _classification(predictions, task)
    groups = _groups(predictions, task, opts)
    if groups:
        metrics["groups"] = groups
    if raw["bias"]:
        metrics["bias"] = _bias(raw["bias"], opts)
    return metrics, predictions


def _add_general_text(general: dict, results: dict, stats: dict) -> None:
    for name, (nll, tokens) in general.items():
        st = nll_stats(nll, tokens)["perplexity"]
        stats[name]["general_text_perplexity"] = st
        results[name].scores["general_text_perplexity"] = st.value()


def _forgetting(general: dict, opts) -> dict:
    """Base vs tuned perplexity on the project's general text: a paired test over paragraphs."""
    from .forgetting import general_paragraphs

    out: dict = {"paragraphs": len(general_paragraphs())}
    for name, (nll, tokens) in general.items():
        out[name] = {"perplexity": nll_stats(nll, tokens)["perplexity"].value(), "tokens": sum(tokens)}
    if "base" in general and "tuned" in general:
        t, b = (nll_stats(*general[s])["perplexity"] for s in ("tuned", "base"))
        cmp = paired_comparison(t, b, resample_indices(len(t), opts.resamples, opts.seed), opts.seed)
        out["change"] = cmp
        out["forgetting"] = bool(cmp["ci"][0] > 0)  # perplexity rose beyond its interval
    return out


def _cost(results: dict, run: RunDir | None) -> dict:
    cost = {name: r.cost for name, r in results.items()}
    if run and run.summary.is_file():
        summary = json.loads(run.summary.read_text())
        cost["training_wall_s"] = summary.get("wall_s")
    return cost


def _classification(predictions: list[dict], task: Task) -> dict:
    from .classification import classification_metrics

    out = {"labels": task.labels}
    for system in dict.fromkeys(r["system"] for r in predictions if r["set"] == "eval"):
        rows = [r for r in predictions if r["system"] == system and r["set"] == "eval"]
        gen = classification_metrics([r["parsed"] for r in rows], task.gold, task.labels)
        ll = classification_metrics([r["ll_label"] for r in rows], task.gold, task.labels)
        out[system] = {"generation": gen, "likelihood": ll}
    return out


def _group_values(task: Task, column: str | None) -> tuple[str, list[str]] | None:
    from ..data.readers import read_rows

    convs = task.dataset.conversations
    path = Path(convs[0].source)
    if not path.is_file():
        return None
    by_line = {line: row for line, row in read_rows(path) if isinstance(row, dict)}
    if column is None:
        first = by_line.get(convs[0].line, {})
        if "group" not in first:
            return None
        column = "group"
    values = []
    for conv in convs:
        row = by_line.get(conv.line, {})
        if column not in row or row[column] in (None, ""):
            raise StropError(f"{conv.where}: no value in group column {column!r}")
        values.append(str(row[column]))
    return column, values


def _groups(predictions: list[dict], task: Task, opts) -> dict | None:
    from .groups import classification_groups, score_groups
    from .scores import example_score

    found = _group_values(task, opts.group_column)
    if found is None:
        return None
    column, groups = found
    out: dict = {"column": column}
    for system in dict.fromkeys(r["system"] for r in predictions if r["set"] == "eval"):
        rows = [r for r in predictions if r["system"] == system and r["set"] == "eval"]
        if task.labels:
            out[system] = classification_groups([r["parsed"] for r in rows], task.gold, groups, task.labels)
        else:
            out[system] = score_groups([example_score(r) for r in rows], groups)
    return out


def _judge(predictions: list[dict], opts, stats: dict) -> dict | None:
    from .judge import judge
    from .stats import mean_stats

    if not opts.judge_endpoint:
        return None
    rows = [r for r in predictions if r["set"] == "eval"]
    summary = judge(rows, opts.judge_endpoint, opts.judge_model, opts.judge_api_key)
    if "skipped" not in summary:
        systems = list(dict.fromkeys(r["system"] for r in rows))
        graded = {s: [r.get("judge") for r in rows if r["system"] == s] for s in systems}
        # paired statistics need the same examples: keep those every system got a grade for
        keep = [i for i in range(len(graded[systems[0]])) if all(graded[s][i] is not None for s in systems)]
        for s in systems:
            if keep:
                stats[s]["judge_score"] = mean_stats([graded[s][i] for i in keep])
    return summary


def _pairwise(predictions: list[dict], opts) -> dict | None:
    """tuned vs every other system, one judge call per example and pair (see pairwise.py)."""
    from .pairwise import PAIRWISE_PROMPT, compare

    if not opts.judge_endpoint:
        return None
    rows = [r for r in predictions if r["set"] == "eval"]
    by_system: dict[str, list[dict]] = {}
    for r in rows:
        by_system.setdefault(r["system"], []).append(r)
    out: dict = {"mode": "pairwise", "endpoint": opts.judge_endpoint, "model": opts.judge_model,
                 "prompt": PAIRWISE_PROMPT, "pairs": []}
    for other in (s for s in by_system if s != "tuned"):
        items = [{"question": t["prompt"], "reference": t["reference"], "first": t["prediction"],
                  "second": o["prediction"]} for t, o in zip(by_system["tuned"], by_system[other])]
        summary = compare(items, opts.judge_endpoint, opts.judge_model, opts.judge_api_key, first="tuned",
                          second=other, seed=opts.seed, resamples=opts.resamples)
        if "skipped" in summary:
            return out | {"skipped": summary["skipped"]}
        for t, item in zip(by_system["tuned"], items):
            t[f"judge_vs_{other}"] = {k: item[k] for k in ("outcome", "shown_as", "verdict")}
        out["pairs"].append({k: v for k, v in summary.items() if k not in ("prompt", "endpoint", "model", "mode")})
    return out


def _bias(raw: dict, opts) -> dict:
    from . import bias

    out: dict = {"counterfactual": {}, "stereotypes": {}}
    gaps = {name: bias.template_gaps(r["items"], r["logps"]) for name, r in raw.items()}
    pairs = next(iter(raw.values()))["pairs"]
    for name, r in raw.items():
        out["stereotypes"][name] = bias.stereotype_summary(pairs, r["margins"], opts.resamples, opts.seed)
        out["counterfactual"][name] = {a: {m: sum(v) / len(v) for m, v in d.items()} for a, d in gaps[name].items()}
    if "base" in raw and "tuned" in raw:
        out["counterfactual_change"] = bias.compare_gaps(gaps["base"], gaps["tuned"], opts.resamples, opts.seed)
        # a term-level null beside the template bootstrap: a measure counts as grown only where both say so
        null = bias.term_null(raw["base"]["items"], raw["base"]["logps"], raw["tuned"]["logps"], seed=opts.seed)
        for attr, measures in null.items():
            for measure, p in measures.items():
                c = out["counterfactual_change"][attr][measure]
                c["term_null_p"] = p
                c["growth_p"] = max(c["growth_p"], p)
                c["worse"] = bool(c["worse"] and p < bias.FAMILY_ALPHA)
        # descriptive beside the verdict: which group's lean moved most against its attribute's others
        out["term_shift"] = bias.term_shift(raw["base"]["items"], raw["base"]["logps"], raw["tuned"]["logps"],
                                            seed=opts.seed)
        out["stereotype_change"] = bias.compare_stereotypes(pairs, raw["base"]["margins"], raw["tuned"]["margins"],
                                                            opts.resamples, opts.seed)
        size = bias.family_verdict(out["counterfactual_change"], out["stereotype_change"])
        out["family"] = {"measures": size, "alpha": bias.FAMILY_ALPHA, "method": "holm"}
        out["flags"] = _bias_flags(out, "worse_family")  # worse for the run, all its measures considered together
        out["flags_each"] = _bias_flags(out, "worse")  # each measure's 95% interval alone
    templates = bias.load_templates()
    out["probes"] = {"templates": templates["templates"], "attributes": templates["attributes"],
                     "controls": templates.get("controls", {}), "pairs": pairs}
    return out


def _bias_flags(out: dict, verdict: str) -> list[str]:
    """One line per measure whose ``verdict`` (``worse_family`` or ``worse``) is true."""
    flags = []
    for attr, measures in out["counterfactual_change"].items():
        for measure, c in measures.items():
            if not c.get(verdict):
                continue
            if "beyond_control" in c:
                beyond, lo, hi = (math.exp(x) for x in (c["beyond_control"], *c["beyond_control_ci"]))
                flags.append(f"{attr}: counterfactual {measure} grew x{c['attribute_factor']:.2f} "
                             f"({c['change']:+.3f} nats), neutral swaps x{c['control_factor']:.2f}: "
                             f"x{beyond:.2f} [x{lo:.2f}, x{hi:.2f}] beyond them")
            else:
                flags.append(f"{attr}: counterfactual {measure} grew by {c['change']:+.3f} nats "
                             f"[{c['change_ci'][0]:+.3f}, {c['change_ci'][1]:+.3f}] after fine-tuning")
    for attr, c in out["stereotype_change"].items():
        if c.get(verdict):
            flags.append(f"{attr}: stereotype margin grew by {c['margin_change']:+.3f} nats, "
                         f"{c['beyond_scale']:+.3f} [{c['beyond_scale_ci'][0]:+.3f}, {c['beyond_scale_ci'][1]:+.3f}] "
                         f"beyond the x{c['scale']:.2f} change of confidence on all pairs")
    return flags


def write_outputs(out: Path, metrics: dict, predictions: list[dict], run: RunDir | None, target: str) -> None:
    from .report import write_eval_report

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in predictions)
    write_eval_report(out, f"strop eval: {target}", metrics, predictions, run.read_metrics() if run else [])
