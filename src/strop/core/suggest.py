""""Did you mean ...?": the one place strop guesses what a mistyped name meant."""
from __future__ import annotations

import difflib


def did_you_mean(word: str, choices, *, n: int = 3, cutoff: float = 0.5, prefix: str = "") -> str:
    """``"; did you mean a, b?"`` for the choices close to ``word``, or ``""``; ``prefix`` goes before each
    (``"--"`` for command-line options)."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=cutoff)
    return f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""


def unknown(kind: str, value: str, valid: list[str]) -> str:
    """``unknown method 'lroa'; did you mean lora? (valid: ...)``"""
    return f"unknown {kind} {value!r}{did_you_mean(value, valid)} (valid: {', '.join(valid)})"
