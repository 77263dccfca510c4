"""General-text perplexity on text the project wrote, to detect forgetting.

``eval/data/general_text.txt`` is ~2,200 tokens of plain English paragraphs
(everyday scenes, how-tos, simple science) written for strop, so it cannot be
in any model's training data verbatim. Each paragraph is scored as plain text
(no chat template): every token after the first, given the ones before it.
A tuned model whose perplexity here rises beyond the interval has lost some
general language ability.
"""
from __future__ import annotations

from importlib import resources


def general_paragraphs() -> list[str]:
    text = (resources.files("strop") / "eval" / "data" / "general_text.txt").read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def general_text_nll(model, tok, paragraphs: list[str], max_length: int = 512) -> tuple[list[float], list[int]]:
    """Per paragraph: summed NLL and the number of scored tokens."""
    from .likelihood import token_nll

    rows = []
    for p in paragraphs:
        ids = tok(p, add_special_tokens=False)["input_ids"][:max_length]
        rows.append((ids, ids))  # every token is a target; the shift leaves the first unscored
    return token_nll(model, tok, rows, batch_size=8)
