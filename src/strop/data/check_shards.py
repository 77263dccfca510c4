"""`strop data check --shard I/N` and `strop data check-merge`: one quality report from parts.

Every part reads the whole file (parsing is cheap next to tokenizing,
hashing and language ID) and checks its own contiguous slice of the rows.
A part's JSON report carries, besides the usual figures, what a merge needs
to be exact: a 64-bit hash and the file:line of every row, and its count of
each token length.

Merged exactly, as if one job had checked the file: rows and unusable rows
(part 0 reports the unusable ones), roles, token length statistics
(min/median/p95/max/histogram), truncation, rows with nothing to train on,
exact duplicates (across parts too), leakage into the eval file, short
answers, personal data. Not exact: near-duplicates are found within each
part only; answer diversity (distinct-n) is an upper bound, since an n-gram
repeated in two parts counts once per part; the language mix comes from each
part's own sample. Embedding checks need all rows at once and are refused.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
from collections import Counter
from pathlib import Path

from ..core.errors import StropError
from ..core.shard import Shard, in_order
from . import dedup
from .check import SIZE_GUIDANCE
from .lengths import histogram

KEY_CHARS = 16  # 64 bits of sha1: collisions are not to be expected below billions of rows
APPROXIMATE = ["near_duplicate: within each part only", "diversity: upper bound (n-grams counted once per part)",
               "languages: each part's own sample"]
ORDER = ["truncated", "no_trainable_tokens", "duplicate", "near_duplicate", "leakage", "short_response", "pii",
         "language_mix"]


def take(ds, shard: Shard):
    """The slice of a loaded dataset this part checks; part 0 also owns the unusable rows."""
    part = shard.take(ds.conversations)
    if not part:
        raise StropError(f"option --shard: part {shard} of {len(ds.conversations)} rows is empty; use fewer parts")
    if shard.index == 0:
        unusable = ds.rows_read - len(ds.conversations)
        return dataclasses.replace(ds, conversations=part, rows_read=len(part) + unusable)
    return dataclasses.replace(ds, conversations=part, skipped={}, problems=[], rows_read=len(part))


def detail(shard: Shard, convs, texts: list[str], tokens: list[int]) -> dict:
    """What check-merge needs from this part beyond its summary figures."""
    rows: dict[str, list[str]] = {}
    for c, t in zip(convs, texts):
        rows.setdefault(dedup.exact_key(t)[:KEY_CHARS], []).append(c.where)
    words = [len(c.reference.split()) for c in convs]
    return {**shard.as_dict(), "rows": rows, "lengths": Counter(tokens),
            "ngrams": {str(n): sum(max(0, w - n + 1) for w in words) for n in (1, 2)}}


def read_parts(paths: list[str]) -> list[dict]:
    parts = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise StropError(f"{path}: part report not found")
        try:
            report = json.loads(path.read_text())
        except ValueError:
            raise StropError(f"{path}: not a JSON report") from None
        if "shard" not in report:
            raise StropError(f"{path}: not written by `strop data check --shard I/N --json FILE`")
        parts.append((str(path), report["shard"], report))
    return in_order(parts, "data check")


def _lengths(reports: list[dict], max_length: int) -> dict:
    counts: Counter = Counter()
    for r in reports:
        counts.update({int(k): v for k, v in r["shard"]["lengths"].items()})
    values = sorted(counts.elements())
    return {"min": values[0], "median": int(statistics.median(values)),
            "p95": values[min(len(values) - 1, int(0.95 * len(values)))], "max": values[-1], "total": sum(values),
            "max_length": max_length, "truncated": sum(r["tokens"]["truncated"] for r in reports),
            "no_trainable": sum(r["tokens"]["no_trainable"] for r in reports), "histogram": histogram(values)}


def _duplicates(reports: list[dict]) -> tuple[list[str], int]:
    """Exact duplicates over all parts, each named with the first row it repeats (in file order)."""
    rows: dict[str, list[str]] = {}
    for r in reports:  # in shard order, so the first where is the first in the file
        for key, wheres in r["shard"]["rows"].items():
            rows.setdefault(key, []).extend(wheres)
    return [f"{w} (same as {ws[0]})" for ws in rows.values() for w in ws[1:]], len(rows)


def _findings(reports: list[dict], exact: list[str], langs: dict, pii: Counter) -> list[dict]:
    merged: dict[str, dict] = {}
    for r in reports:
        for f in r["findings"]:
            if f["code"] in ("duplicate", "language_mix"):
                continue  # recomputed over every part below
            g = merged.setdefault(f["code"], {**f, "count": 0, "examples": []})
            g["count"] += f["count"]
            g["examples"] = (g["examples"] + f["examples"])[:5]
    if exact:
        merged["duplicate"] = {"severity": "warning", "code": "duplicate", "message": "exact duplicate conversations",
                               "count": len(exact), "examples": exact[:5]}
    if "near_duplicate" in merged:
        merged["near_duplicate"]["message"] += " (within each part)"
    if "pii" in merged:
        merged["pii"]["message"] = ("personal data or secrets (" +
                                    ", ".join(f"{k} {v}" for k, v in pii.most_common()) + ")")
    main = next(iter(langs), None)
    if main and langs[main] < 0.9:
        examples = [e for r in reports for f in r["findings"] if f["code"] == "language_mix" for e in f["examples"]]
        merged["language_mix"] = {"severity": "info", "code": "language_mix", "count": len(examples),
                                  "message": f"{int(langs[main] * 100)}% {main}; other languages present",
                                  "examples": examples[:5]}
    rank = {code: i for i, code in enumerate(ORDER)}
    # unusable-row errors first (as check() lists them), then the measured findings in check()'s order
    return sorted(merged.values(), key=lambda f: rank.get(f["code"], -1))


def _languages(reports: list[dict]) -> dict:
    counts: Counter = Counter()
    sampled = 0
    for r in reports:
        n = r["languages"]["sampled_rows"]
        sampled += n
        counts.update({k: v * n for k, v in r["languages"]["share"].items()})
    share = {k: round(v / sampled, 4) for k, v in counts.most_common()} if sampled else {}
    return {"share": share, "sampled_rows": sampled}


def _diversity(reports: list[dict]) -> dict:
    out = {}
    for n in (1, 2):
        total = sum(r["shard"]["ngrams"][str(n)] for r in reports)
        seen = sum(r["diversity"][f"distinct_{n}"] * r["shard"]["ngrams"][str(n)] for r in reports)
        out[f"distinct_{n}"] = round(seen / total, 4) if total else 0.0
    return out


def merge(reports: list[dict]) -> dict:
    """One report, in check()'s layout, from the parts of one sharded check (in shard order)."""
    first = reports[0]
    n = sum(r["rows"] for r in reports)
    exact, distinct = _duplicates(reports)
    pii = sum((Counter(r["pii"]) for r in reports), Counter())
    langs = _languages(reports)
    leak = first["leakage"] and {**first["leakage"], "leaked_rows": sum(r["leakage"]["leaked_rows"] for r in reports)}
    findings = _findings(reports, exact, langs["share"], pii)
    timings = Counter()
    for r in reports:
        timings.update(r["timings"])
    return {
        "file": first["file"], "format": first["format"], "kind": first["kind"], "rows": n,
        "rows_read": sum(r["rows_read"] for r in reports), "skipped": first["skipped"], "problems": first["problems"],
        "roles": dict(sum((Counter(r["roles"]) for r in reports), Counter())),
        "tokens": _lengths(reports, first["tokens"]["max_length"]),
        "duplicates": {"exact": len(exact), "near": sum(r["duplicates"]["near"] for r in reports),
                       "threshold": first["duplicates"]["threshold"], "clusters": None, "distinct_rows": distinct},
        "leakage": leak, "languages": langs, "pii": dict(pii), "diversity": _diversity(reports),
        "size_guidance": next(text for limit, text in SIZE_GUIDANCE if n < limit),
        "embeddings": {"skipped": "embedding checks need every row at once; they do not run on parts"},
        "findings": findings, "timings": {k: round(v, 2) for k, v in timings.items()},
        "errors": sum(1 for f in findings if f["severity"] == "error"),
        "warnings": sum(1 for f in findings if f["severity"] == "warning"),
        "shards": {"count": len(reports), "approximate": APPROXIMATE},
    }
