"""Group fairness on the user's own labelled eval set (a group column).

Own code rather than fairlearn (one less dependency; the definitions are short):

* demographic-parity difference, per label: max - min over groups of the share
  of examples predicted as that label; reported as the max over labels;
* equalized-odds difference, per label (one vs rest): the larger of the
  spread of true-positive rates and the spread of false-positive rates across
  groups; reported as the max over labels (fairlearn's definition for binary).

For generation tasks without labels, the per-group mean of each example's
score (keyword hit or ROUGE-L) and its spread are reported instead.
"""
from __future__ import annotations

from ..core.errors import StropError


def _spread(values: list[float]) -> float:
    values = [v for v in values if v is not None]
    return max(values) - min(values) if values else 0.0


def _rate(hits: list[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def classification_groups(predicted: list[str], gold: list[str], groups: list[str], labels: list[str]) -> dict:
    """Per-group accuracy and macro F1, demographic-parity and equalized-odds differences."""
    from sklearn.metrics import f1_score

    names = sorted(set(groups))
    if len(names) < 2:
        raise StropError(f"--group-column: only one group ({names[0]!r}) in the eval set; nothing to compare")
    per_group = {}
    for g in names:
        idx = [i for i, x in enumerate(groups) if x == g]
        p, y = [predicted[i] for i in idx], [gold[i] for i in idx]
        per_group[g] = {"n": len(idx), "accuracy": sum(a == b for a, b in zip(p, y)) / len(idx),
                        "macro_f1": float(f1_score(y, p, labels=labels, average="macro", zero_division=0))}
    dp, eo = {}, {}
    for label in labels:
        sel, tpr, fpr = [], [], []
        for g in names:
            idx = [i for i, x in enumerate(groups) if x == g]
            sel.append(_rate([predicted[i] == label for i in idx]))
            tpr.append(_rate([predicted[i] == label for i in idx if gold[i] == label]))
            fpr.append(_rate([predicted[i] == label for i in idx if gold[i] != label]))
        dp[label] = _spread(sel)
        eo[label] = max(_spread(tpr), _spread(fpr))
    return {"groups": per_group, "demographic_parity_difference": max(dp.values()),
            "equalized_odds_difference": max(eo.values()), "per_label": {"demographic_parity": dp, "equalized_odds": eo},
            "accuracy_gap": _spread([v["accuracy"] for v in per_group.values()])}


def score_groups(scores: list[float], groups: list[str]) -> dict:
    """Per-group mean of a per-example score and the spread between groups."""
    names = sorted(set(groups))
    per_group = {g: {"n": groups.count(g), "score": sum(s for s, x in zip(scores, groups) if x == g) / groups.count(g)}
                 for g in names}
    return {"groups": per_group, "score_gap": _spread([v["score"] for v in per_group.values()])}
