"""`strop data augment`: more prompts from the ones you have.

Cheap text operations (word deletion, swap, insertion, synonym replacement
from the small offline list in ``synonyms.py``) and LLM rewrites (paraphrase,
back-translation) through the local Engine or an OpenAI-compatible endpoint.
Only user turns are changed by default, since answers are what the model
learns to write. Every new row carries ``strop_augmented: {origin, op}``;
rows that duplicate an original or each other are dropped; `strop data split`
keeps them out of eval.
"""
from __future__ import annotations

import copy
import random
from typing import Callable

from ..core.errors import StropError
from . import dedup
from .load import ANY_KIND, load
from .records import Conversation
from .splitting import AUGMENT_KEY
from .synonyms import SYNONYMS
from .write import refuse_overwrite, row_of, write_rows


def delete_words(text: str, rng: random.Random, p: float = 0.1) -> str:
    words = text.split()
    kept = [w for w in words if rng.random() > p]
    return " ".join(kept or words[:1])


def swap_words(text: str, rng: random.Random, n: int = 1) -> str:
    words = text.split()
    for _ in range(n if len(words) > 1 else 0):
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


def synonym_replace(text: str, rng: random.Random, n: int = 2) -> str:
    words = text.split()
    spots = [i for i, w in enumerate(words) if w.lower().strip(".,!?;:") in SYNONYMS]
    for i in rng.sample(spots, min(n, len(spots))):
        core = words[i].lower().strip(".,!?;:")
        new = rng.choice(SYNONYMS[core])
        new = new.capitalize() if words[i][:1].isupper() else new
        words[i] = words[i].lower().replace(core, new, 1) if words[i][:1].islower() else new + words[i][len(core):]
    return " ".join(words)


def insert_words(text: str, rng: random.Random, n: int = 1) -> str:
    words = text.split()
    spots = [w.lower().strip(".,!?;:") for w in words if w.lower().strip(".,!?;:") in SYNONYMS]
    for _ in range(min(n, len(spots))):
        words.insert(rng.randrange(len(words) + 1), rng.choice(SYNONYMS[rng.choice(spots)]))
    return " ".join(words)


TEXT_OPS: dict[str, Callable[[str, random.Random], str]] = {
    "delete": delete_words, "swap": swap_words, "synonym": synonym_replace, "insert": insert_words,
}
LLM_PROMPTS = {
    "paraphrase": "Rewrite the following text with different words, keeping its meaning. Reply with the rewrite only.\n\n{text}",
    "backtranslate": "Translate the following text into {pivot}. Reply with the translation only.\n\n{text}",
}


KNOWN_OPS = (*TEXT_OPS, *LLM_PROMPTS)


def parse_ops(text: str) -> list[str]:
    """``--ops`` as a list: comma-separated names, each one of ``KNOWN_OPS``, at least one."""
    ops = [op.strip() for op in (text or "").split(",") if op.strip()]
    check_ops(ops)
    return ops


def check_ops(ops: list[str]) -> None:
    if not ops:
        raise StropError(f"option --ops: no operation given; name one or more of {', '.join(KNOWN_OPS)}")
    unknown = [op for op in ops if op not in KNOWN_OPS]
    if unknown:
        raise StropError(f"option --ops: unknown {', '.join(unknown)} (known: {', '.join(KNOWN_OPS)})")


def check_endpoint(url: str) -> str:
    """``--endpoint``: an http:// or https:// base URL with a host."""
    from urllib.parse import urlparse

    try:
        parts = urlparse(url)
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError as exc:
        raise StropError(f"option --endpoint: {url!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StropError(f"option --endpoint: {url!r} is not an http:// or https:// URL "
                         "(e.g. http://localhost:8000/v1)")
    return url


class Rewriter:
    """Paraphrase/back-translate through the local Engine (a model name/run) or an OpenAI-compatible endpoint."""

    def __init__(self, model: str, endpoint: str | None = None, pivot: str = "French") -> None:
        self.model, self.endpoint, self.pivot = model, endpoint, pivot
        if endpoint:
            from openai import OpenAI

            self.client = OpenAI(base_url=check_endpoint(endpoint), api_key="unused")
        else:
            from ..models.engine import Engine

            self.engine = Engine(model)

    def ask(self, prompt: str) -> str:
        if self.endpoint:
            import openai

            try:
                r = self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": prompt}],
                                                        temperature=0.7, max_tokens=256)
            except openai.APIStatusError as exc:
                raise StropError(f"option --endpoint: {self.endpoint} answered HTTP {exc.status_code} "
                                 f"({_one_line(exc.message)})") from None
            except openai.APIError as exc:  # connection refused, unknown host, timeout
                why = _one_line(str(exc.__cause__ or exc))
                raise StropError(f"option --endpoint: cannot reach {self.endpoint} ({why})") from None
            if not r.choices:
                raise StropError(f"option --endpoint: {self.endpoint} answered with no choices")
            return (r.choices[0].message.content or "").strip()
        return self.engine.generate(prompt, max_new_tokens=256, temperature=0.7).strip()

    def __call__(self, op: str, text: str) -> str:
        if op == "paraphrase":
            return self.ask(LLM_PROMPTS["paraphrase"].format(text=text))
        there = self.ask(LLM_PROMPTS["backtranslate"].format(text=text, pivot=self.pivot))
        return self.ask(LLM_PROMPTS["backtranslate"].format(text=there, pivot="English"))


def _rewrite_row(conv: Conversation, fn: Callable[[str], str], target: str) -> dict:
    """A copy of the source row with user (and/or assistant) strings rewritten."""
    row = copy.deepcopy(row_of(conv))
    roles = {"prompt": ("user", "human"), "answer": ("assistant", "gpt"), "both": ("user", "human", "assistant", "gpt")}[target]
    alpaca_fields = {"prompt": ("instruction", "input"), "answer": ("output",), "both": ("instruction", "input", "output")}[target]
    for key in alpaca_fields + (("prompt",) if target != "answer" else ()):
        if isinstance(row.get(key), str) and row[key].strip():
            row[key] = fn(row[key])
    for key in ("messages", "conversations"):
        for turn in row.get(key) or []:
            if isinstance(turn, dict) and turn.get("role", turn.get("from")) in roles:
                field = "content" if "content" in turn else "value"
                if isinstance(turn.get(field), str):
                    turn[field] = fn(turn[field])
    return row


def augment(path: str, output: str, ops: list[str], per_row: int = 1, seed: int = 0, target: str = "prompt",
            rewriter: Rewriter | None = None, include_original: bool = True) -> dict:
    check_ops(ops)
    if per_row < 1:
        raise StropError(f"option --per-row: must be at least 1, got {per_row}")
    if any(op in LLM_PROMPTS for op in ops) and rewriter is None:
        raise StropError("option --ops: paraphrase/backtranslate need a model (--model NAME, optionally --endpoint URL)")
    out = refuse_overwrite(output, path)
    ds = load(path, kinds=ANY_KIND)
    rng = random.Random(seed)
    seen = {dedup.exact_key(_row_text(row_of(c))) for c in ds.conversations}
    new_rows, dropped, empty = [], 0, 0
    for conv in ds.conversations:
        for k in range(per_row):
            op = ops[(k + conv.line) % len(ops)]
            fn = (lambda t, op=op: TEXT_OPS[op](t, rng)) if op in TEXT_OPS else (lambda t, op=op: rewriter(op, t))
            try:
                row = _rewrite_row(conv, _non_empty(fn), target)
            except _EmptyRewrite:
                empty += 1  # a model that answered nothing: no row rather than a blank turn
                continue
            key = dedup.exact_key(_row_text(row))
            if key in seen:
                dropped += 1  # identical to an original or an earlier augmentation
                continue
            seen.add(key)
            # origin_key finds the original again after both land in one file.
            row[AUGMENT_KEY] = {"origin": conv.where, "origin_key": dedup.exact_key(dedup.text_of(conv)), "op": op}
            new_rows.append(row)
    rows = ([row_of(c) for c in ds.conversations] if include_original else []) + new_rows
    if rows:  # --only-new with nothing new: no empty file (the command says so and fails)
        write_rows(out, rows)
    return {"input": str(path), "output": str(out), "originals": len(ds), "augmented": len(new_rows),
            "dropped_duplicates": dropped, "dropped_empty": empty, "written": bool(rows)}


class _EmptyRewrite(Exception):
    pass


def _non_empty(fn: Callable[[str], str]) -> Callable[[str], str]:
    def checked(text: str) -> str:
        out = fn(text)
        if not out.strip():
            raise _EmptyRewrite
        return out
    return checked


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _row_text(row: dict) -> str:
    import json

    return json.dumps({k: v for k, v in row.items() if k != AUGMENT_KEY}, sort_keys=True)
