"""Example reward functions for ``--objective grpo`` and loading ``module:function``.

A reward function receives the batch as keyword lists, the way TRL's
GRPOTrainer calls it: ``prompts`` and ``completions`` (rendered text), plus
every other column of the training rows (strop adds ``reference``, the
row's own assistant answer, and passes through extra scalar fields such as
``keyword`` or ``pattern``). It returns one float per completion.

Each example reads its parameters from a row column when the row has one
and falls back to the module default, so one function serves many datasets.
"""
from __future__ import annotations

import functools
import importlib
import math
import re
from typing import Callable

from ..core.errors import StropError

LENGTH_MIN_WORDS = 3
LENGTH_MAX_WORDS = 20
FORMAT_PATTERN = r"^[A-Z][^\n]*[.!?]$"  # one capitalised sentence-like line ending in punctuation


def _column(kwargs: dict, name: str, n: int, default):
    values = kwargs.get(name)
    if values is None:
        return [default] * n
    return [default if v is None or v == "" else v for v in values]


def regex_match(prompts: list, completions: list, **kwargs) -> list[float]:
    """1.0 when the stripped completion fully matches the row's ``pattern`` (default FORMAT_PATTERN)."""
    patterns = _column(kwargs, "pattern", len(completions), FORMAT_PATTERN)
    return [1.0 if re.fullmatch(p, c.strip(), flags=re.DOTALL) else 0.0 for p, c in zip(patterns, completions)]


def length_window(prompts: list, completions: list, **kwargs) -> list[float]:
    """1.0 inside [min_words, max_words]; outside, decays linearly with the distance (floor 0)."""
    lows = _column(kwargs, "min_words", len(completions), LENGTH_MIN_WORDS)
    highs = _column(kwargs, "max_words", len(completions), LENGTH_MAX_WORDS)
    out = []
    for lo, hi, text in zip(lows, highs, completions):
        n = len(text.split())
        miss = (lo - n) if n < lo else (n - hi) if n > hi else 0
        out.append(max(0.0, 1.0 - miss / max(hi, 1)))
    return out


def keyword_coverage(prompts: list, completions: list, **kwargs) -> list[float]:
    """Share of the row's keywords (``keywords`` list or one ``keyword``) found in the completion, case-insensitive."""
    many = _column(kwargs, "keywords", len(completions), None)
    one = _column(kwargs, "keyword", len(completions), None)
    out = []
    for words, word, text in zip(many, one, completions):
        wanted = list(words) if words else ([word] if word else [])
        if not wanted:
            raise StropError("reward keyword_coverage: the data rows need a 'keyword' or 'keywords' field")
        low = text.lower()
        out.append(sum(1 for w in wanted if str(w).lower() in low) / len(wanted))
    return out


def reference_agreement(prompts: list, completions: list, **kwargs) -> list[float]:
    """Token-set F1 between completion and the row's reference answer (the assistant turn of the data)."""
    refs = _column(kwargs, "reference", len(completions), None)
    out = []
    for ref, text in zip(refs, completions):
        if ref is None:
            raise StropError("reward reference_agreement: the data rows carry no reference answer")
        a, b = _words(text), _words(ref)
        common = len(a & b)
        out.append(0.0 if not common else 2 * common / (len(a) + len(b)))
    return out


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def load(spec: str) -> Callable:
    """Import ``module:function`` and wrap it so a bad return is a one-line StropError."""
    module_name, _, func_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure is the user's module, not strop
        raise StropError(f"reward function {spec}: cannot import {module_name} ({type(exc).__name__}: {exc})") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise StropError(f"reward function {spec}: {module_name} has no function {func_name!r}")
    return checked(func, spec)


def checked(func: Callable, spec: str) -> Callable:
    """The function, refusing results that are not one finite number per completion."""

    @functools.wraps(func)
    def wrapper(prompts, completions, **kwargs):
        result = func(prompts=prompts, completions=completions, **kwargs)
        if not isinstance(result, (list, tuple)) or len(result) != len(completions):
            got = f"{len(result)} values" if isinstance(result, (list, tuple)) else type(result).__name__
            raise StropError(f"reward function {spec}: must return a list of {len(completions)} numbers, got {got}")
        for i, value in enumerate(result):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise StropError(f"reward function {spec}: returned {value!r} for completion {i}, not a finite number")
        return [float(v) for v in result]

    return wrapper
