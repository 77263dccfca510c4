"""`strop data check`: format, size, lengths, masking and duplicates at a glance.

This is the spine's short report; deeper curation (near-duplicates, PII,
relevance, diversity) builds on the same record type.
"""
from __future__ import annotations

import hashlib
import statistics
from collections import Counter

from .load import load
from .render import render

# Rough guidance: a few thousand examples is a sensible target for many tasks.
SIZE_GUIDANCE = ((100, "very small: enough to teach a narrow behaviour (a persona, a format), not a skill"),
                 (1000, "small: fine for style and narrow tasks; expect limited generalisation"),
                 (5000, "moderate: a sensible size for many single-domain tasks"),
                 (float("inf"), "large: enough for broad domain adaptation"))


def _percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def check(path: str, base_model: str = "smollm2-135m-instruct", max_length: int = 512, tokenizer=None) -> dict:
    ds = load(path)
    findings: list[dict] = []

    def find(severity: str, code: str, message: str, where: list[str]) -> None:
        findings.append({"severity": severity, "code": code, "message": message, "count": len(where), "examples": where[:5]})

    roles = Counter(m.role for c in ds.conversations for m in c.messages)
    seen: dict[str, str] = {}
    dups = []
    for c in ds.conversations:
        key = hashlib.sha1("\x1e".join(f"{m.role}\x1f{m.content.strip()}" for m in c.messages).encode()).hexdigest()
        if key in seen:
            dups.append(f"{c.where} (same as {seen[key]})")
        else:
            seen[key] = c.where
    short = [c.where for c in ds.conversations if any(m.role == "assistant" and len(m.content.split()) < 2 for m in c.messages)]

    if tokenizer is None:
        from .. import models

        tokenizer = models.load_tokenizer(base_model)
    lengths, truncated, no_train = [], [], []
    for c in ds.conversations:
        r = render(tokenizer, c, max_length)
        lengths.append(len(r.input_ids) if not r.truncated else len(tokenizer(r.text, add_special_tokens=False)["input_ids"]))
        if r.truncated:
            truncated.append(c.where)
        if r.n_trainable == 0:
            no_train.append(c.where)

    if dups:
        find("warning", "duplicate", "exact duplicate conversations", dups)
    if short:
        find("warning", "short_response", "assistant answers shorter than two words", short)
    if truncated:
        find("warning", "truncated", f"conversations longer than max_length {max_length} will be cut", truncated)
    if no_train:
        find("error", "no_trainable_tokens", "no assistant token survives truncation; these rows would be dropped", no_train)
    n = len(ds)
    guidance = next(text for limit, text in SIZE_GUIDANCE if n < limit)
    return {
        "file": str(path),
        "format": ds.format,
        "rows": n,
        "roles": dict(roles),
        "tokens": {"min": min(lengths), "median": int(statistics.median(lengths)), "p95": _percentile(lengths, 0.95),
                   "max": max(lengths), "total": sum(lengths), "max_length": max_length},
        "size_guidance": guidance,
        "findings": findings,
        "errors": sum(1 for f in findings if f["severity"] == "error"),
        "warnings": sum(1 for f in findings if f["severity"] == "warning"),
    }


def format_report(r: dict) -> str:
    t = r["tokens"]
    lines = [
        f"{r['file']}: {r['rows']} conversations, format {r['format']}",
        f"  roles: {', '.join(f'{k} {v}' for k, v in sorted(r['roles'].items()))}",
        f"  tokens per conversation: min {t['min']}, median {t['median']}, p95 {t['p95']}, max {t['max']} "
        f"(max_length {t['max_length']}); {t['total']} in all",
        f"  size: {r['size_guidance']}",
    ]
    if not r["findings"]:
        lines.append("  no problems found")
    for f in r["findings"]:
        lines.append(f"  {f['severity']}: {f['message']}: {f['count']} (e.g. {', '.join(f['examples'][:3])})")
    return "\n".join(lines)
