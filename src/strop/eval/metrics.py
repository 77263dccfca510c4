"""Generation metrics (one table), keyword hit rate and assistant-only perplexity.

Every generation metric is ``(predictions, references) -> dict`` so a new one
is a function plus a row in ``METRICS``. sacrebleu and rouge-score are imported
inside the functions that need them, keeping ``import strop.eval.metrics`` cheap.
"""
from __future__ import annotations

import math
import re
import string
from typing import Callable

from ..errors import StropError


def _check(predictions: list[str], references: list[str], metric: str) -> None:
    if not predictions:
        raise StropError(f"metric {metric}: no predictions to score (the eval set is empty)")
    if len(predictions) != len(references):
        raise StropError(f"metric {metric}: {len(predictions)} predictions but {len(references)} references")


def bleu(predictions: list[str], references: list[str]) -> dict:
    """Corpus BLEU, 0-100 (sacrebleu defaults: 13a tokenizer, exp smoothing)."""
    import sacrebleu

    _check(predictions, references, "bleu")
    return {"bleu": sacrebleu.corpus_bleu(predictions, [references]).score}


def chrf(predictions: list[str], references: list[str]) -> dict:
    """Corpus chrF, 0-100."""
    import sacrebleu

    _check(predictions, references, "chrf")
    return {"chrf": sacrebleu.corpus_chrf(predictions, [references]).score}


def rouge(predictions: list[str], references: list[str]) -> dict:
    """Mean ROUGE-1/2/L F-measure over examples, 0-1, Porter-stemmed."""
    from rouge_score import rouge_scorer

    _check(predictions, references, "rouge")
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
    _check(predictions, references, "exact_match")
    hits = sum(p.strip() == r.strip() for p, r in zip(predictions, references))
    return {"exact_match": hits / len(predictions)}


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """SQuAD-style normalisation: lowercase, drop punctuation and articles, squeeze spaces."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def normalized_exact_match(predictions: list[str], references: list[str]) -> dict:
    _check(predictions, references, "normalized_exact_match")
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


def perplexity(model, tok, conversations: list, max_length: int, system_prompt: str = "", batch_size: int = 8) -> dict:
    """Token-weighted mean NLL over assistant tokens only, and its exponential.

    Labels come from ``render`` (-100 outside assistant turns), so the prompt
    is context but never scored. Rows are right-padded; padding is masked out
    of attention and labels, so batching does not change the result.
    """
    if not conversations:
        raise StropError("perplexity: no conversations to score (the eval set is empty)")
    nll, tokens = example_nll(model, tok, conversations, max_length, system_prompt, batch_size)
    total_tokens = sum(tokens)
    if not total_tokens:
        raise StropError(f"perplexity: no assistant tokens left within max_length={max_length}")
    loss = sum(nll) / total_tokens
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": total_tokens}


def example_nll(model, tok, conversations: list, max_length: int, system_prompt: str = "",
                batch_size: int = 8) -> tuple[list[float], list[int]]:
    """Per conversation: summed NLL of its assistant tokens and how many there were.

    A conversation truncated past every answer gets (0.0, 0), so the lists stay
    aligned with the input (bootstrap and paired tests need that).
    """
    from ..data.render import render

    rendered = [render(tok, c, max_length, system_prompt=system_prompt) for c in conversations]
    return token_nll(model, tok, [(r.input_ids, r.labels) for r in rendered], batch_size)


def token_nll(model, tok, rows: list[tuple[list[int], list[int]]], batch_size: int = 8) -> tuple[list[float], list[int]]:
    """Summed NLL of the labelled tokens (label != -100) of each (input_ids, labels) row."""
    import torch
    import torch.nn.functional as F

    from ..data.render import IGNORE

    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    nll: list[float] = []
    count: list[int] = []
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            batch = rows[i:i + batch_size]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, (row_ids, row_labels) in enumerate(batch):
                n = len(row_ids)
                ids[j, :n] = torch.tensor(row_ids)
                labels[j, :n] = torch.tensor(row_labels)
                mask[j, :n] = 1
            # position t predicts token t+1; only positions some row scores need the (large) vocab projection
            keep = ((labels[:, 1:] != IGNORE).any(dim=0)).nonzero().flatten()  # (K,)
            if len(keep) == 0:
                nll += [0.0] * len(batch)
                count += [0] * len(batch)
                continue
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           logits_to_keep=keep.to(device)).logits.float()  # (B, K, V)
            targets = labels[:, keep + 1].to(device)  # (B, K)
            losses = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")  # (B, K)
            nll += losses.sum(dim=1).tolist()
            count += (targets != IGNORE).sum(dim=1).tolist()
    return nll, count
