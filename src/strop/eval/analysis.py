"""Intervals for every headline number, paired comparisons, and plain-words verdicts."""
from __future__ import annotations

import math

from .scores import HIGHER_IS_BETTER
from .stats import Stats, bootstrap_ci, paired_comparison, resample_indices, significant

# Which pairs to compare, in reading order: (candidate, reference system).
PAIRS = (("tuned", "base"), ("tuned", "few-shot"), ("few-shot", "base"))


def intervals(stats: dict[str, dict[str, Stats]], resamples: int, seed: int) -> dict[str, dict[str, list[float]]]:
    """system -> metric -> [low, high] (95% percentile bootstrap)."""
    out: dict = {}
    for system, per_metric in stats.items():
        out[system] = {}
        for metric, st in per_metric.items():
            idx = resample_indices(len(st), resamples, seed)
            out[system][metric] = list(bootstrap_ci(st, idx))
    return out


def comparisons(stats: dict[str, dict[str, Stats]], resamples: int, seed: int) -> list[dict]:
    """Every metric both systems have, for each pair in ``PAIRS`` that exists."""
    out = []
    for a, b in PAIRS:
        if a not in stats or b not in stats:
            continue
        for metric in stats[a]:
            if metric not in stats[b] or metric not in HIGHER_IS_BETTER:
                continue
            sa, sb = stats[a][metric], stats[b][metric]
            if len(sa) != len(sb):
                continue
            idx = resample_indices(len(sa), resamples, seed)
            cmp = paired_comparison(sa, sb, idx, seed)
            out.append({"a": a, "b": b, "metric": metric, **cmp, **_winner(a, b, metric, cmp)})
    return out


def _winner(a: str, b: str, metric: str, cmp: dict) -> dict:
    diff = cmp["diff"]
    if diff == 0 or math.isnan(diff):
        return {"winner": None, "significant": False}
    better_a = (diff > 0) == HIGHER_IS_BETTER[metric]
    return {"winner": a if better_a else b, "significant": significant(cmp["p"])}


def verdicts(comps: list[dict]) -> list[str]:
    """One sentence per comparison, e.g. 'rougeL: tuned beats base by +0.21 [0.12, 0.30], p=0.002 (significant)'."""
    lines = []
    for c in comps:
        span = f"{c['diff']:+.4g} [{c['ci'][0]:+.4g}, {c['ci'][1]:+.4g}], p={c['p']:.3g}"
        if c["winner"] is None:
            lines.append(f"{c['metric']}: {c['a']} and {c['b']} tie ({span})")
            continue
        loser = c["b"] if c["winner"] == c["a"] else c["a"]
        tag = "significant" if c["significant"] else "not significant at 5%"
        lines.append(f"{c['metric']}: {c['winner']} beats {loser} ({c['a']} - {c['b']} = {span}, {tag})")
    return lines
