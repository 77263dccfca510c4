"""The `strop eval` page: verdicts, cost, forgetting, classification, groups, bias, judge, prompts.

Formats the numbers in metrics.json; computes nothing. The per-example table
is sortable without JavaScript: each ordering is pre-rendered and the links
switch between them with CSS ``:target``, so the page works where scripts
are blocked (mail attachments, artifact viewers) and carries no assets.
"""
from __future__ import annotations

import html
import math
from pathlib import Path

from ..report import plots
from ..report.html import fmt, plot_loss_curve, write_report

BAR_METRICS = ["keyword_hit_rate", "accuracy", "ll_accuracy", "rougeL", "chrf", "bleu", "perplexity",
               "general_text_perplexity", "judge_score"]


def _e(x) -> str:
    return html.escape(str(x))


def _factor_cell(c: dict) -> str:
    """The attribute's growth factor over the neutral swaps', with its interval."""
    lo, hi = (math.exp(x) for x in c["beyond_control_ci"])
    return f"x{math.exp(c['beyond_control']):.2f} <span class='ci'>[x{lo:.2f}, x{hi:.2f}]</span>"


def _ci(ci) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def verdict_section(metrics: dict) -> str:
    lines = metrics.get("verdicts") or []
    if not lines:
        return ""
    items = "".join(f"<li>{_e(v)}</li>" for v in lines)
    return ("<h2>Which system wins</h2><p class='meta'>Paired on the same examples: difference with a 95% "
            f"bootstrap interval and a permutation-test p-value.</p><ul>{items}</ul>")


def cost_section(metrics: dict) -> str:
    cost = metrics.get("cost") or {}
    rows = [[_e(s), fmt(c["prompt_tokens_per_request"]), fmt(c["answer_tokens_per_request"]),
             fmt(c["latency_s_per_request"]), str(c["batch_size"])]
            for s, c in cost.items() if isinstance(c, dict) and "requests" in c]
    if not rows:
        return ""
    train = cost.get("training_wall_s")
    note = f"<p>Training time of this run: {fmt(train)} s (summary.json wall_s).</p>" if train is not None else ""
    return ("<h2>Cost</h2>" + _table(["system", "prompt tokens / request", "answer tokens / request",
                                      "latency s / request", "batch size"], rows) +
            "<p class='meta'>Latency is the batched generation wall time divided by the number of requests.</p>" + note)


def forgetting_section(metrics: dict) -> str:
    g = metrics.get("general_text") or {}
    systems = [s for s in g if isinstance(g[s], dict) and "perplexity" in g[s]]
    if not systems:
        return ""
    rows = [[_e(s), fmt(g[s]["perplexity"]) + f" <span class='ci'>{_ci(metrics['intervals'].get(s, {}).get('general_text_perplexity'))}</span>",
             str(g[s]["tokens"])] for s in systems]
    out = "<h2>General text (forgetting check)</h2>" + _table(["system", "perplexity", "tokens"], rows)
    if "change" in g:
        c = g["change"]
        verdict = ("<span class='flag'>perplexity rose beyond its interval: some forgetting</span>" if g["forgetting"]
                   else "no rise beyond the interval")
        out += f"<p>tuned - base: {fmt(c['diff'])} {_ci(c['ci'])}, p={c['p']:.3g}: {verdict}.</p>"
    out += f"<p class='meta'>{g['paragraphs']} paragraphs of plain English written for strop, scored without a chat template.</p>"
    return out + preserve_note(metrics.get("preserve"))


def _opt(value) -> str:
    return "-" if value is None else fmt(value)


def tradeoff_section(metrics: dict, out: Path) -> str:
    """Task gain, forgetting and bias side by side; with a scale sweep, the curve and the chosen point."""
    from .sweep import task_metric

    systems = metrics.get("systems", {})
    if not {"base", "tuned"} <= set(systems):
        return ""
    base, tuned = systems["base"], systems["tuned"]
    rows = []
    metric = task_metric(tuned)
    if metric:
        rows.append([f"task: {_e(metric)}", fmt(base[metric]), fmt(tuned[metric]), f"{tuned[metric] - base[metric]:+.3f}"])
    if "general_hit_rate" in tuned:
        rows.append(["general questions answered", fmt(base["general_hit_rate"]), fmt(tuned["general_hit_rate"]),
                     f"{tuned['general_hit_rate'] - base['general_hit_rate']:+.3f}"])
    g = metrics.get("general_text", {})
    if "base" in g and "tuned" in g:
        b, t = g["base"]["perplexity"], g["tuned"]["perplexity"]
        rows.append(["general-text perplexity", fmt(b), fmt(t), f"{t / b - 1:+.1%}"])
    bias = metrics.get("bias", {})
    if "flags" in bias:
        alone = len(bias.get("flags_each", bias["flags"]))
        rows.append(["bias measures worse than base (family-wise)", "", str(len(bias["flags"])),
                     f"{alone} at 95% each" if alone != len(bias["flags"]) else ""])
    parts = ["<h2>Task gain, forgetting and bias</h2>", _table(["", "base", "tuned", "change"], rows)]
    sweep = metrics.get("scale_sweep")
    if sweep:
        parts.append("<h3>Adapter scale sweep</h3><p>The LoRA update scaled from 0 (the base) to 1 (the tuned "
                     f"model); chosen: {_e(sweep['why'])}.</p>")
        parts.append(_table(["scale", _e(sweep["metric"] or "task metric"), "general questions", "general-text perplexity",
                             "change", ""],
                            [[f"{r['scale']:g}", _opt(r["task_metric"]), _opt(r["general_hit_rate"]),
                              fmt(r["general_text_perplexity"]), f"{r['perplexity_change']:+.1%}",
                              "chosen" if r["scale"] == sweep["chosen"] else ("" if r["within_budget"] else "over budget")]
                             for r in sweep["points"]]))
        if sweep["metric"]:
            parts.append(f'<img src="{_e(plots.tradeoff(sweep, out / "tradeoff.png"))}" alt="adapter scale trade-off">')
        if "applied" in sweep:
            parts.append(f"<p>Applied: the run's adapter now has scale {sweep['applied']['adapter_scale']:g}.</p>")
    return "".join(parts)


def preserve_note(rec: dict | None) -> str:
    """What the run did against forgetting while it trained (summary.json's preserve record)."""
    if not rec:
        return ""
    mode = rec.get("mode", "none")
    if mode == "kl":
        what = (f"KL to the base, weight {rec.get('weight')}, on the base's own answers to "
                f"{rec.get('replay_rows')} general prompts")
    elif mode == "replay":
        what = f"{rec.get('replay_rows')} of the base's own answers to general prompts replayed in training"
    else:
        what = "none"
    why = f" ({_e(rec['why'])})" if rec.get("why") and rec["why"] != "chosen" else ""
    return f"<p>Forgetting protection while training: {_e(what)}{why}.</p>"


def classification_section(metrics: dict, out: Path) -> str:
    c = metrics.get("classification")
    if not c:
        return ""
    keys = ["accuracy", "macro_precision", "macro_recall", "macro_f1", "micro_precision", "micro_recall", "micro_f1"]
    rows, images = [], []
    for system, modes in c.items():
        if system == "labels":
            continue
        for mode, m in modes.items():
            rows.append([_e(system), mode, *(fmt(m[k]) for k in keys), str(m["unparsed"])])
            conf = m["confusion"]
            name = plots.confusion(conf["matrix"], conf["rows"], conf["columns"], f"{system} ({mode})",
                                   out / f"confusion_{system}_{mode}.png")
            images.append(f'<img src="{_e(name)}" alt="confusion matrix {_e(system)} {mode}">')
    return ("<h2>Classification</h2>" + f"<p>labels: {_e(', '.join(c['labels']))}</p>" +
            _table(["system", "mode", *keys, "unparsed"], rows) +
            "<p class='meta'>generation: label parsed from the answer (see docs/evaluation.md); "
            "likelihood: the candidate label the model scores highest.</p>" + "".join(images))


def groups_section(metrics: dict) -> str:
    g = metrics.get("groups")
    if not g:
        return ""
    rows = []
    for system, m in g.items():
        if system == "column":
            continue
        per = "; ".join(f"{_e(k)}: " + ", ".join(f"{a} {fmt(b)}" for a, b in v.items()) for k, v in m["groups"].items())
        summary = ", ".join(f"{k} {fmt(v)}" for k, v in m.items() if isinstance(v, float))
        rows.append([_e(system), per, _e(summary)])
    return f"<h2>Groups (column {_e(g['column'])})</h2>" + _table(["system", "per group", "differences"], rows)


def bias_section(metrics: dict, out: Path) -> str:
    b = metrics.get("bias")
    if not b:
        return ""
    parts = ["<h2>Bias probes</h2>"]
    flags = b.get("flags")
    if flags is not None:
        family = b.get("family", {})
        parts.append("<ul>" + "".join(f"<li class='flag'>{_e(f)}</li>" for f in flags) + "</ul>" if flags
                     else "<p>No attribute got worse than the base beyond its interval after fine-tuning.</p>")
        alone = [f for f in b.get("flags_each", []) if f not in flags]
        if family:
            parts.append(f"<p>A measure counts as worse where it stays significant with the run's other "
                         f"{family['measures'] - 1} measures taken into account (Holm's step-down, one-sided "
                         f"{family['alpha']:g}); each measure alone at 95% would flag a run that changed nothing "
                         f"group-specific about half the time.</p>")
        if alone:
            parts.append("<p>Beyond its own 95% interval, but not beyond the run's family-wise threshold:</p><ul>"
                         + "".join(f"<li>{_e(f)}</li>" for f in alone) + "</ul>")
    change = b.get("counterfactual_change")
    if change:
        rows = [[_e(a), m, f"{fmt(c['base'])} {_ci(c['base_ci'])}", f"{fmt(c['tuned'])} {_ci(c['tuned_ci'])}",
                 f"{fmt(c['change'])} {_ci(c['change_ci'])}",
                 f"{fmt(c['control_change'])} (x{c['control_factor']:.2f})" if "control_factor" in c else "",
                 _factor_cell(c) if "control_factor" in c else "",
                 "<span class='flag'>worse</span>" if c.get("worse_family", c["worse"])
                 else "worse alone at 95%" if c["worse"] else ""]
                for a, ms in change.items() for m, c in ms.items()]
        parts.append("<h3>Counterfactual swaps (spread across terms, nats; 0 = the swap changes nothing)</h3>")
        parts.append("<p>Neutral swaps ask the same templates about terms that name no group (coat colours, "
                     "things held); their growth is what fine-tuning does to any swap. An attribute is worse "
                     "only where its gap grew by a larger factor than theirs, beyond the interval (factors, "
                     "because a model made more confident everywhere widens every gap by the same factor, "
                     "and so a wide gap by more nats).</p>")
        parts.append(_table(["attribute", "measure", "base", "tuned", "tuned - base", "neutral swaps: tuned - base",
                             "growth factor beyond neutral", ""], rows))
        parts.append(f'<img src="{_e(plots.bias_gaps(change, "ll_gap", out / "bias_gaps.png"))}" alt="bias gaps">')
        parts.append(term_shift_table(b.get("term_shift") or {}))
    else:
        rows = [[_e(s), _e(a), fmt(v["ll_gap"]), fmt(v["lean_gap"])] for s, d in b["counterfactual"].items() for a, v in d.items()]
        parts.append(_table(["system", "attribute", "ll_gap", "lean_gap"], rows))
    rows = [[_e(s), _e(a), str(v["n"]), f"{fmt(v['preference_rate'])} {_ci(v['ci'])}", fmt(v["mean_margin"])]
            for s, d in b["stereotypes"].items() for a, v in d.items()]
    parts.append("<h3>Stereotype pairs (preference rate for the stereotyped sentence; 0.5 = none)</h3>")
    parts.append(_table(["system", "attribute", "pairs", "preference rate", "mean margin (nats)"], rows))
    return "".join(parts)


def term_shift_table(shifts: dict) -> str:
    """Per attribute, the group whose lean moved most against the attribute's other groups (``bias.term_shift``)."""
    if not shifts:
        return ""
    rows = [[_e(a), _e(s["term"]), f"{s['terms'][s['term']][0]:+.2f} -> {s['terms'][s['term']][1]:+.2f}",
             f"{s['shift']:+.2f}", f"{s['reference_sd']:.2f}", fmt(s["p"]),
             _e(", ".join(f"{t} {v[0]:+.2f} -> {v[1]:+.2f}" for t, v in sorted(s["terms"].items(),
                                                                           key=lambda kv: -kv[1][1])))]
            for a, s in shifts.items()]
    return ("<h3>Which group moved (lean relative to the attribute's other groups, nats)</h3>"
            "<p>A spread does not change when a fine-tune reorders the groups or turns against one in the middle. "
            "Here each group's lean (log p(positive) - log p(negative)) is taken relative to the mean of its "
            "attribute's groups; the shift is tuned minus base after the change of confidence, and p compares "
            "the largest shift with the other attributes' shifts. Descriptive, not a verdict: a fine-tune on "
            "text about people moves every group's lean by tenths of a nat.</p>"
            + _table(["attribute", "moved most", "relative lean, base -> tuned", "shift", "others' sd", "p",
                      "every group, most positive first (tuned)"], rows))


def judge_section(metrics: dict) -> str:
    j = metrics.get("judge")
    if not j:
        return ""
    if "skipped" in j:
        return f"<h2>LLM judge</h2><p class='skip'>SKIPPED: {_e(j['skipped'])}</p>"
    if j.get("mode") == "pairwise":
        return pairwise_section(j)
    rows = [[_e(s), fmt(v), _ci(metrics["intervals"].get(s, {}).get("judge_score"))] for s, v in j["mean"].items()]
    return (f"<h2>LLM judge</h2><p>{_e(j['model'])} at {_e(j['endpoint'])}; unparsed grades: {_e(j['unparsed'])}</p>"
            + _table(["system", "mean grade (1-5)", "95% interval"], rows))


def _rate(pair: dict, key: str) -> str:
    return f"{fmt(pair[key])} {_ci(pair.get(key + '_ci'))}" if pair.get(key) is not None else "-"


def pairwise_section(j: dict) -> str:
    """Win/tie/loss of tuned against each other system, rates with 95% intervals."""
    from .pairwise import sentence

    rows = []
    for p in j["pairs"]:
        rows.append([f"{_e(p['first'])} vs {_e(p['second'])}", str(p["wins"]), str(p["ties"]), str(p["losses"]),
                     str(p["unparsed"]), _rate(p, "win_rate"), _rate(p, "score"), fmt(p.get("p", float("nan"))),
                     f"A {p['position_picks']['A']} / B {p['position_picks']['B']}"])
    lines = "".join(f"<li>{_e(sentence(p))}</li>" for p in j["pairs"])
    return (f"<h2>LLM judge (pairwise)</h2><p>{_e(j['model'])} at {_e(j['endpoint'])}</p><ul>{lines}</ul>"
            + _table(["pair", "wins", "ties", "losses", "unparsed", "win rate", "score (tie = 1/2)", "p",
                      "judge picked position"], rows)
            + "<p class='meta'>For a seeded half of the questions the tuned answer was shown second (B), to "
              "cancel the judge's position bias; verdicts were mapped back before counting. Rates are over "
              "judged questions; p is a sign-flip test of wins against losses.</p>")


def prompts_section(metrics: dict) -> str:
    parts = []
    if metrics.get("prompts"):
        parts.append(f"<h3>Few-shot prompt (k={metrics['prompts']['k_shot']}), put before every question</h3>"
                     f"<pre>{_e(metrics['prompts']['few_shot'])}</pre>")
    if metrics.get("judge", {}).get("prompt"):
        parts.append(f"<h3>Judge prompt</h3><pre>{_e(metrics['judge']['prompt'])}</pre>")
    probes = metrics.get("bias", {}).get("probes")
    if probes:
        t = "\n".join(f"{x['prompt']}  ->  + {x['positive']} / - {x['negative']}" for x in probes["templates"])
        terms = "\n".join(f"{a}: {', '.join(v)}" for a, v in probes["attributes"].items())
        pairs = "\n".join(f"[{p['attribute']}] {p['more']}  |  {p['less']}" for p in probes["pairs"])
        parts.append(f"<h3>Bias templates</h3><pre>{_e(t)}\n\n{_e(terms)}</pre><h3>Stereotype pairs</h3><pre>{_e(pairs)}</pre>")
    return "<h2>Exact prompts</h2>" + "".join(parts) if parts else ""


def write_eval_report(out: Path, title: str, metrics: dict, predictions: list[dict], train_metrics: list[dict]) -> Path:
    from ..report.curves import GEN_PANELS, plot_curves
    from ..report.examples import sortable_examples

    curve = plot_loss_curve(train_metrics, out / "loss_curve.png") if train_metrics else None
    bars = plots.metric_bars(metrics["systems"], metrics.get("intervals", {}), BAR_METRICS, out / "metrics.png")
    gen = plot_curves(train_metrics, out, GEN_PANELS)  # task metrics during training (eval_generate_samples)
    sections = [verdict_section(metrics), tradeoff_section(metrics, out),
                f'<img src="{_e(bars)}" alt="metrics with 95% intervals">' if bars else "",
                "<h2>Task metrics during training</h2>" + "".join(f'<img src="{_e(n)}" alt="{_e(n)}" width="720">'
                                                                 for n in gen) if gen else "",
                cost_section(metrics), forgetting_section(metrics), classification_section(metrics, out),
                groups_section(metrics), bias_section(metrics, out), judge_section(metrics), prompts_section(metrics)]
    return write_report(out / "report.html", title, metrics, predictions, Path(curve).name if curve else None,
                        sections=[s for s in sections if s], examples_html=sortable_examples(predictions))
