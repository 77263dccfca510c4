"""Generation metrics (one table), keyword hit rate and assistant-only perplexity.

Every generation metric is ``(predictions, references) -> dict`` so a new one
is a function plus a row in ``METRICS``. sacrebleu and rouge-score are imported
inside the functions that need them, keeping ``import strop.metrics`` cheap.
"""
from __future__ import annotations

import re
import string
from typing import Callable

from .core.errors import StropError


def check_lengths(predictions: list[str], references: list[str], metric: str) -> None:
    if not predictions:
        raise StropError(f"metric {metric}: no predictions to score (the eval set is empty)")
    if len(predictions) != len(references):
        raise StropError(f"metric {metric}: {len(predictions)} predictions but {len(references)} references")


def bleu(predictions: list[str], references: list[str]) -> dict:
    """Corpus BLEU, 0-100 (sacrebleu defaults: 13a tokenizer, exp smoothing)."""
    import sacrebleu

    check_lengths(predictions, references, "bleu")
    return {"bleu": sacrebleu.corpus_bleu(predictions, [references]).score}


def chrf(predictions: list[str], references: list[str]) -> dict:
    """Corpus chrF, 0-100."""
    import sacrebleu

    check_lengths(predictions, references, "chrf")
    return {"chrf": sacrebleu.corpus_chrf(predictions, [references]).score}


def rouge(predictions: list[str], references: list[str]) -> dict:
    """Mean ROUGE-1/2/L F-measure over examples, 0-1, Porter-stemmed."""
    from rouge_score import rouge_scorer

    check_lengths(predictions, references, "rouge")
    keys = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    totals = dict.fromkeys(keys, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # rouge-score takes (target, prediction)
        for k in keys:
            totals[k] += scores[k].fmeasure
    return {k: v / len(predictions) for k, v in totals.items()}


def exact_match(predictions: list[str], references: list[str]) -> dict:
    """Fraction of answers equal to the reference (outer whitespace ignored)."""
    check_lengths(predictions, references, "exact_match")
    hits = sum(p.strip() == r.strip() for p, r in zip(predictions, references))
    return {"exact_match": hits / len(predictions)}


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """SQuAD-style normalisation: lowercase, drop punctuation and articles, squeeze spaces."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def normalized_exact_match(predictions: list[str], references: list[str]) -> dict:
    check_lengths(predictions, references, "normalized_exact_match")
    hits = sum(normalize(p) == normalize(r) for p, r in zip(predictions, references))
    return {"normalized_exact_match": hits / len(predictions)}


METRICS: dict[str, Callable[[list[str], list[str]], dict]] = {
    "bleu": bleu,
    "rouge": rouge,
    "chrf": chrf,
    "exact_match": exact_match,
    "normalized_exact_match": normalized_exact_match,
}


def compute_all(predictions: list[str], references: list[str]) -> dict:
    """Every metric in ``METRICS``, merged into one flat dict."""
    out: dict = {}
    for fn in METRICS.values():
        out.update(fn(predictions, references))
    return out


def keyword_hits(predictions: list[str], keywords: list[str]) -> list[bool]:
    """Per answer: does it contain its keyword (case-insensitive substring)?"""
    if len(predictions) != len(keywords):
        raise StropError(f"keyword hit rate: {len(predictions)} predictions but {len(keywords)} keywords")
    return [k.lower() in p.lower() for p, k in zip(predictions, keywords)]


def keyword_hit_rate(predictions: list[str], keywords: list[str]) -> dict:
    """Fraction of answers that mention their keyword (identity and general-knowledge checks)."""
    if not predictions:
        raise StropError("keyword hit rate: no predictions to score (no rows carry a keyword)")
    hits = keyword_hits(predictions, keywords)
    return {"keyword_hit_rate": sum(hits) / len(hits)}
