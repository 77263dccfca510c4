"""Classification mode: parse labels out of answers, score with scikit-learn, rank labels by likelihood.

Parsing rule (documented in docs/evaluation.md, pinned in tests):

1. lowercase the answer and strip surrounding whitespace and punctuation; if it
   equals a label (compared the same way), that label;
2. otherwise the label whose first whole-word, case-insensitive occurrence
   comes earliest in the answer (on a tie, the longer label);
3. otherwise ``UNPARSED``: a wrong answer, shown as its own confusion-matrix column.
"""
from __future__ import annotations

import re
import string

from ..core.errors import StropError
from ..data.records import Conversation, Message

UNPARSED = "<none>"


def _canon(text: str) -> str:
    return text.strip().strip(string.punctuation + string.whitespace).lower()


def parse_label(answer: str, labels: list[str]) -> str:
    canon = _canon(answer)
    for label in labels:
        if canon == _canon(label):
            return label
    best: tuple[int, int, str] | None = None
    for label in labels:
        m = re.search(rf"(?<!\w){re.escape(label.strip())}(?!\w)", answer, flags=re.IGNORECASE)
        if m and (best is None or (m.start(), -len(label)) < (best[0], best[1])):
            best = (m.start(), -len(label), label)
    return best[2] if best else UNPARSED


def resolve_labels(convs: list[Conversation], labels: list[str] | None, source: str) -> tuple[list[str], list[str]]:
    """(label set, gold label per example); a one-line StropError for anything inconsistent."""
    gold_raw = [str(c.meta["label"]) if "label" in c.meta else c.reference for c in convs]
    if labels is None:
        labels = sorted({g.strip() for g in gold_raw})
    labels = [lab.strip() for lab in labels if lab.strip()]
    if len(labels) < 2:
        raise StropError(f"--labels: need at least two labels, got {labels}")
    by_canon = {_canon(lab): lab for lab in labels}
    gold = []
    for conv, g in zip(convs, gold_raw):
        if _canon(g) not in by_canon:
            raise StropError(f"{conv.where}: reference label {g!r} is not one of --labels {', '.join(labels)}")
        gold.append(by_canon[_canon(g)])
    missing = [lab for lab in labels if lab not in gold]
    if missing:
        raise StropError(f"--labels: {', '.join(map(repr, missing))} never occurs in the references of {source}; "
                         "drop it from --labels or add examples of it")
    return labels, gold


def classification_metrics(predicted: list[str], gold: list[str], labels: list[str]) -> dict:
    """Accuracy, macro/micro P/R/F1 over the label set, and the confusion matrix.

    Micro scores are restricted to the label set: an unparsed answer costs
    recall but is no false positive for any label, so micro-P can exceed accuracy.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    if len(predicted) != len(gold) or not gold:
        raise StropError(f"classification: {len(predicted)} predictions for {len(gold)} references")
    out = {"accuracy": float(accuracy_score(gold, predicted))}
    for avg in ("macro", "micro"):
        p, r, f, _ = precision_recall_fscore_support(gold, predicted, labels=labels, average=avg, zero_division=0)
        out.update({f"{avg}_precision": float(p), f"{avg}_recall": float(r), f"{avg}_f1": float(f)})
    cols = labels + [UNPARSED]
    matrix = confusion_matrix(gold, predicted, labels=cols)[: len(labels)]  # rows: gold labels only
    out["confusion"] = {"rows": labels, "columns": cols, "matrix": matrix.tolist()}
    out["unparsed"] = sum(p == UNPARSED for p in predicted)
    return out


def rank_labels(model, tok, convs: list[Conversation], labels: list[str], system_prompt: str,
                max_length: int) -> list[str]:
    """Per example, the label with the highest total log-likelihood as the assistant's answer."""
    from .likelihood import example_nll

    scored = [Conversation([*c.prompt_messages, Message("assistant", lab)], c.source, c.line)
              for c in convs for lab in labels]
    nll, _ = example_nll(model, tok, scored, max_length, system_prompt, batch_size=16)
    k = len(labels)
    return [labels[min(range(k), key=lambda j: nll[i * k + j])] for i in range(len(convs))]
