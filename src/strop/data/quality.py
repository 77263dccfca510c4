"""Text-level checks that need no model: language mix, answer diversity, PII."""
from __future__ import annotations

import random
from collections import Counter

from . import pii
from .records import Conversation

LANG_SAMPLE = 5000  # language ID costs ~1 ms a row; a sample estimates the mix well


def languages(convs: list[Conversation], seed: int = 0) -> tuple[dict[str, float], list[tuple[int, str]], int]:
    """Share per language (of a sample when large), the sampled (index, lang) and the sample size."""
    import py3langid

    # Language ID on a few words is a guess (persona answers come out as Latin); skip them.
    idx = [i for i, c in enumerate(convs) if len(c.reference.split()) >= 6]
    if len(idx) > LANG_SAMPLE:
        idx = sorted(random.Random(seed).sample(idx, LANG_SAMPLE))
    found = [(i, py3langid.classify(_lang_text(convs[i]))[0]) for i in idx]
    counts = Counter(lang for _, lang in found)
    if not found:
        return {}, [], 0
    return {k: round(v / len(found), 4) for k, v in counts.most_common()}, found, len(found)


def _lang_text(conv: Conversation) -> str:
    # The answer is what the model learns to write; 300 characters identify it.
    return conv.reference[:300]


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams / all n-grams over the answers: low values mean repetitive data."""
    total, seen = 0, set()
    for t in texts:
        words = t.lower().split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return round(len(seen) / total, 4) if total else 0.0


def pii_hits(convs: list[Conversation]) -> list[tuple[int, list[str]]]:
    """(row index, kinds found) for rows that contain personal data or secrets."""
    out = []
    for i, c in enumerate(convs):
        kinds = [k for m in c.messages for k, _, _ in pii.find(m.content)]
        for m in c.rejected or []:
            kinds += [k for k, _, _ in pii.find(m.content)]
        if kinds:
            out.append((i, kinds))
    return out


def short_answers(convs: list[Conversation], min_words: int) -> list[int]:
    return [i for i, c in enumerate(convs)
            if any(m.role == "assistant" and m.weight > 0 and len(m.content.split()) < min_words for m in c.messages)]
