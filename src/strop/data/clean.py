"""`strop data clean`: apply fixes and record every removed or changed row.

The input is never touched. The output keeps the user's row format; the
manifest (JSONL) has one line per removed or changed row with its source
line and a reason code, so nothing disappears unexplained.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import StropError
from . import dedup, pii, quality
from .load import ANY_KIND, load
from .records import Conversation
from .write import refuse_collisions, row_of, rows_file, write_rows

PII_ACTIONS = ("redact", "drop", "keep")


@dataclass
class CleanOptions:
    near_threshold: float | None = 0.8  # None: exact duplicates only
    pii: str = "redact"
    min_words: int = 0  # drop rows with a trained answer shorter than this
    max_length: int | None = None  # drop rows longer than this many tokens (needs a tokenizer)
    language: str | None = None  # keep only rows whose answer is in this language
    base_model: str = "smollm2-135m-instruct"


def _entry(conv_or_where, action: str, reason: str, detail: str = "") -> dict:
    where = conv_or_where.where if isinstance(conv_or_where, Conversation) else conv_or_where
    source, _, line = where.rpartition(":")
    return {"where": where, "source": source or where, "line": int(line) if line.isdigit() else None,
            "action": action, "reason": reason, "detail": detail}


def manifest_path(output: str | Path, manifest: str | Path | None = None) -> Path:
    """Where the manifest goes: ``--manifest`` (a .jsonl file) or OUTPUT.manifest.jsonl beside the output."""
    out = Path(output)
    if not manifest:
        return out.with_name(out.name + ".manifest.jsonl")
    path = Path(manifest)
    if path.suffix.lower() != ".jsonl":
        raise StropError(f"option --manifest: {path} must end in .jsonl (one JSON object per removed or changed row)")
    return path


def supported_languages() -> list[str]:
    from py3langid import langid

    return sorted({str(c) for c in langid._get_identifier().nb_classes})  # the model classify() uses, loaded once


def check_language(code: str) -> str:
    """``code`` lower-cased if py3langid can tell it apart, else one line listing the codes it knows."""
    known = supported_languages()
    low = code.strip().lower()
    if low not in known:
        raise StropError(f"option --language: {code!r} is not a language code the detector knows; "
                         f"use one of: {', '.join(known)}")
    return low


def clean(path: str, output: str, opts: CleanOptions | None = None, manifest: str | None = None, tokenizer=None) -> dict:
    """Write the cleaned rows to ``output`` and the manifest; with no row left, only the manifest
    (``rows_out`` 0; the command then fails, since an empty training file is never what was meant)."""
    opts = opts or CleanOptions()
    if opts.pii not in PII_ACTIONS:
        raise StropError(f"option --pii: {opts.pii!r} is not one of {', '.join(PII_ACTIONS)}")
    if opts.language:
        opts.language = check_language(opts.language)
    mpath = manifest_path(Path(output), manifest)
    refuse_collisions([(path, "input")], [(output, "--output"), (mpath, "--manifest")])
    out = rows_file(output)
    ds = load(path, strict=False, kinds=ANY_KIND)
    log = [_entry(p.where, "removed", p.code, p.reason) for p in ds.problems]
    keep = list(ds.conversations)
    for step in (_dedup, _short, _language, _too_long, _pii):
        keep = step(keep, opts, log, tokenizer)
    rows = [row_of(c) if not c.meta.get("_redacted") else c.meta.pop("_redacted") for c in keep]
    if rows:
        write_rows(out, rows)
    write_rows(mpath, log)
    counts: dict[str, int] = {}
    for e in log:
        key = f"{e['action']}:{e['reason']}"
        counts[key] = counts.get(key, 0) + 1
    return {"input": str(path), "output": str(out), "manifest": str(mpath), "rows_in": ds.rows_read,
            "rows_out": len(rows), "counts": counts}


def _dedup(convs, opts, log, tok) -> list[Conversation]:
    threshold = 1.0 if opts.near_threshold is None else opts.near_threshold  # 1.0: exact duplicates only
    groups = dedup.clusters([dedup.text_of(c) for c in convs], threshold)
    keep = []
    for c, g in zip(convs, groups):
        if convs[g] is c:
            keep.append(c)
            continue
        exact = dedup.exact_key(dedup.text_of(c)) == dedup.exact_key(dedup.text_of(convs[g]))
        log.append(_entry(c, "removed", "duplicate" if exact else "near_duplicate", f"keeps {convs[g].where}"))
    return keep


def _short(convs, opts, log, tok) -> list[Conversation]:
    if opts.min_words <= 0:
        return convs
    bad = set(quality.short_answers(convs, opts.min_words))
    for i in sorted(bad):
        log.append(_entry(convs[i], "removed", "short_response", f"answer under {opts.min_words} words"))
    return [c for i, c in enumerate(convs) if i not in bad]


def _language(convs, opts, log, tok) -> list[Conversation]:
    if not opts.language:
        return convs
    import py3langid

    keep = []
    for c in convs:
        lang = py3langid.classify(c.reference[:300])[0]
        if lang == opts.language or len(c.reference.split()) < 6:  # too short to judge: keep
            keep.append(c)
        else:
            log.append(_entry(c, "removed", "language", f"answer detected as {lang}"))
    return keep


def _too_long(convs, opts, log, tok) -> list[Conversation]:
    if not opts.max_length:
        return convs
    from .lengths import measure

    if tok is None:
        from .. import models

        tok = models.load_tokenizer(opts.base_model)
    lengths = measure(tok, convs, opts.max_length).tokens
    for c, n in zip(convs, lengths):
        if n > opts.max_length:
            log.append(_entry(c, "removed", "too_long", f"{n} tokens > {opts.max_length}"))
    return [c for c, n in zip(convs, lengths) if n <= opts.max_length]


def _pii(convs, opts, log, tok) -> list[Conversation]:
    if opts.pii == "keep":
        return convs
    keep = []
    for i, kinds in quality.pii_hits(convs):
        c = convs[i]
        if opts.pii == "drop":
            log.append(_entry(c, "removed", "pii", ", ".join(sorted(set(kinds)))))
            c.meta["_drop"] = True
        else:
            c.meta["_redacted"] = _redact_row(row_of(c))
            log.append(_entry(c, "changed", "pii_redacted", ", ".join(sorted(set(kinds)))))
    for c in convs:
        if not c.meta.pop("_drop", False):
            keep.append(c)
    return keep


def _redact_row(value):
    """A copy of the row with every string redacted (keys untouched)."""
    if isinstance(value, str):
        return pii.redact(value)[0]
    if isinstance(value, list):
        return [_redact_row(v) for v in value]
    if isinstance(value, dict):
        return {k: _redact_row(v) for k, v in value.items()}
    return value


def format_summary(result: dict) -> str:
    lines = [f"{result['input']}: {result['rows_in']} rows read, "
             + (f"{result['rows_out']} written to {result['output']}" if result["rows_out"]
                else f"none left, so {result['output']} was not written")]
    for key, n in sorted(result["counts"].items()):
        lines.append(f"  {key.replace(':', ' ')}: {n}")
    lines.append(f"  manifest: {result['manifest']} (one line per removed or changed row)")
    return "\n".join(lines)


def read_manifest(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
