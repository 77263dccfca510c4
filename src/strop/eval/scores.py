"""Per-example statistics for every headline metric, so each gets an interval.

``generation_stats`` mirrors ``metrics.METRICS``: aggregating all rows gives
exactly what ``compute_all`` reports (pinned in tests), while any resample of
rows gives that metric on the resample. BLEU and chrF keep sacrebleu's
sufficient statistics (n-gram counts per sentence), so a resampled corpus
score is the real corpus score of those sentences, not a mean of sentence BLEU.
"""
from __future__ import annotations

import math

import numpy as np

from ..metrics import check_lengths, normalize
from .stats import Stats, mean_stats, ratio_stats

# Headline metrics and which way is better (report and significance verdicts use this).
HIGHER_IS_BETTER = {"bleu": True, "chrf": True, "rouge1": True, "rouge2": True, "rougeL": True,
                    "exact_match": True, "normalized_exact_match": True, "keyword_hit_rate": True,
                    "accuracy": True, "ll_accuracy": True, "judge_score": True,
                    "perplexity": False, "general_text_perplexity": False}  # loss: same test as perplexity


def _sacrebleu_stats(metric, predictions: list[str], references: list[str]) -> Stats:
    rows = np.asarray(metric._extract_corpus_statistics(predictions, [references]), dtype=float)
    return Stats(rows, lambda s, n: metric._compute_score_from_stats([int(round(x)) for x in s]).score)


def generation_stats(predictions: list[str], references: list[str]) -> dict[str, Stats]:
    """Stats for bleu, chrf, rouge1/2/L, exact_match, normalized_exact_match."""
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU, CHRF

    check_lengths(predictions, references, "generation")
    keys = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    per = [scorer.score(r, p) for p, r in zip(predictions, references)]
    out = {"bleu": _sacrebleu_stats(BLEU(), predictions, references),
           "chrf": _sacrebleu_stats(CHRF(), predictions, references)}
    for k in keys:
        out[k] = mean_stats([s[k].fmeasure for s in per])
    out["exact_match"] = mean_stats([float(p.strip() == r.strip()) for p, r in zip(predictions, references)])
    out["normalized_exact_match"] = mean_stats([float(normalize(p) == normalize(r))
                                                for p, r in zip(predictions, references)])
    return out


def nll_stats(nll: list[float], tokens: list[int]) -> dict[str, Stats]:
    """Token-weighted loss and perplexity from per-example NLL sums and token counts."""
    return {"loss": ratio_stats(nll, tokens), "perplexity": ratio_stats(nll, tokens, math.exp)}


def example_score(row: dict) -> float | None:
    """One number per answer for sorting the per-example table (worst first).

    Correctness when the row has one (classification), else the keyword hit,
    else ROUGE-L against the reference.
    """
    for key in ("correct", "hit"):
        if row.get(key) is not None:
            return float(row[key])
    return row.get("rougeL")
