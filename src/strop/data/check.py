"""`strop data check`: the quality gate before training.

Loads leniently (every bad row becomes a finding with file:line and a reason
code), then measures: token lengths against max_length, rows with nothing to
train on, exact and near duplicates, train/eval leakage, short answers,
language mix, personal data and secrets, answer diversity and dataset size.
Embedding checks (relevance, cluster coverage, 2-D map) run only when asked.
"""
from __future__ import annotations

import statistics
import time
from collections import Counter

from . import dedup, quality
from .lengths import histogram, measure
from .load import ANY_KIND, load

# Rough guidance: a few thousand examples is a sensible target for many tasks.
SIZE_GUIDANCE = ((100, "very small: enough to teach a narrow behaviour (a persona, a format), not a skill"),
                 (1000, "small: fine for style and narrow tasks; expect limited generalisation"),
                 (5000, "moderate: a sensible size for many single-domain tasks"),
                 (float("inf"), "large: enough for broad domain adaptation"))


def _percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Findings(list):
    def add(self, severity: str, code: str, message: str, where: list[str]) -> None:
        if where:
            self.append({"severity": severity, "code": code, "message": message, "count": len(where),
                         "examples": where[:5]})


def check(path: str, base_model: str = "smollm2-135m-instruct", max_length: int = 512, tokenizer=None, *,
          fmt: str | None = None, eval_path: str | None = None, near_threshold: float = 0.8, min_words: int = 2,
          embeddings: bool = False, domain: str | None = None, seeds: str | None = None,
          min_relevance: float = 0.2, shard=None) -> dict:
    """The report; with ``shard`` (strop.core.shard.Shard) only that slice's rows, plus what a merge needs."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    ds = load(path, fmt, strict=False, kinds=ANY_KIND)
    if shard is not None:
        from .check_shards import take

        ds = take(ds, shard)
    convs, found = ds.conversations, Findings()
    for code, n in ds.skipped.items():
        probs = [p for p in ds.problems if p.code == code]
        if len({p.reason for p in probs}) == 1:
            found.add("error", code, f"rows that cannot be used ({probs[0].reason})", [p.where for p in probs])
        else:  # one code, several reasons: each example names its own
            found.add("error", code, "rows that cannot be used", [f"{p.where} ({p.reason})" for p in probs])
    lap("load")
    if tokenizer is None:
        from .. import models

        tokenizer = models.load_tokenizer(base_model)
    lengths = measure(tokenizer, convs, max_length)
    truncated = [c.where for c, n in zip(convs, lengths.tokens) if n > max_length]
    no_train = [c.where for c, p in zip(convs, lengths.prompt_tokens) if p >= max_length]
    found.add("warning", "truncated", f"conversations longer than max_length {max_length} will be cut", truncated)
    found.add("error", "no_trainable_tokens", "no assistant token survives masking and truncation; these rows are dropped",
              no_train)
    lap("lengths")
    texts = [dedup.text_of(c) for c in convs]
    groups = dedup.clusters(texts, near_threshold)
    exact_first: dict[str, str] = {}
    exact, near = [], []
    for c, t, g in zip(convs, texts, groups):
        key = dedup.exact_key(t)
        if key in exact_first:
            exact.append(f"{c.where} (same as {exact_first[key]})")
        elif convs[g] is not c:
            near.append(f"{c.where} (like {convs[g].where})")
        exact_first.setdefault(key, c.where)
    found.add("warning", "duplicate", "exact duplicate conversations", exact)
    found.add("warning", "near_duplicate", f"near-duplicates (MinHash Jaccard >= {near_threshold})", near)
    lap("duplicates")
    leak = _leakage(convs, texts, eval_path, near_threshold, found)
    lap("leakage")
    found.add("warning", "short_response", f"assistant answers shorter than {min_words} words",
              [convs[i].where for i in quality.short_answers(convs, min_words)])
    pii_rows = quality.pii_hits(convs)
    pii_kinds = Counter(k for _, kinds in pii_rows for k in set(kinds))
    found.add("warning", "pii", "personal data or secrets (" + ", ".join(f"{k} {v}" for k, v in pii_kinds.most_common()) + ")",
              [f"{convs[i].where} ({', '.join(sorted(set(k)))})" for i, k in pii_rows])
    lap("pii")
    langs, sampled, n_lang = quality.languages(convs)
    main_lang = next(iter(langs), None)
    if main_lang and langs[main_lang] < 0.9:
        found.add("info", "language_mix", f"{int(langs[main_lang] * 100)}% {main_lang}; other languages present",
                  [f"{convs[i].where} ({lang})" for i, lang in sampled if lang != main_lang])
    lap("language")
    answers = [c.reference for c in convs]
    diversity = {"distinct_1": quality.distinct_n(answers, 1), "distinct_2": quality.distinct_n(answers, 2)}
    lap("diversity")
    n = len(ds)
    report = {
        "file": str(path), "format": ds.format, "kind": ds.kind, "rows": n, "rows_read": ds.rows_read,
        "skipped": ds.skipped,
        "problems": [{"where": p.where, "code": p.code, "reason": p.reason} for p in ds.problems],
        "roles": dict(Counter(m.role for c in convs for m in c.messages)),
        "tokens": {"min": min(lengths.tokens), "median": int(statistics.median(lengths.tokens)),
                   "p95": _percentile(lengths.tokens, 0.95), "max": max(lengths.tokens), "total": sum(lengths.tokens),
                   "max_length": max_length, "truncated": len(truncated), "no_trainable": len(no_train),
                   "histogram": histogram(lengths.tokens)},
        "duplicates": {"exact": len(exact), "near": len(near), "threshold": near_threshold,
                       "clusters": len(set(groups))},
        "leakage": leak,
        "languages": {"share": langs, "sampled_rows": n_lang},
        "pii": dict(pii_kinds),
        "diversity": diversity,
        "size_guidance": next(text for limit, text in SIZE_GUIDANCE if n < limit),
    }
    report["embeddings"] = _embeddings(convs, embeddings, domain, seeds, min_relevance, found)
    lap("embeddings")
    report.update(findings=list(found), timings=timings,
                  errors=sum(1 for f in found if f["severity"] == "error"),
                  warnings=sum(1 for f in found if f["severity"] == "warning"))
    if shard is not None:
        from .check_shards import detail

        report["shard"] = detail(shard, convs, texts, lengths.tokens)
    return report


def _leakage(convs, texts, eval_path, threshold, found: Findings) -> dict | None:
    if not eval_path:
        return None
    ev = load(eval_path, strict=False, kinds=ANY_KIND).conversations
    pairs = dedup.overlap(texts, [dedup.text_of(c) for c in ev], threshold)
    prompts = {dedup.exact_key(dedup.prompt_of(c)): c.where for c in ev}
    same_prompt = [(i, prompts[dedup.exact_key(dedup.prompt_of(c))]) for i, c in enumerate(convs)
                   if dedup.exact_key(dedup.prompt_of(c)) in prompts]
    seen = {i for i, _ in pairs}
    where = [f"{convs[i].where} (in eval at {ev[j].where})" for i, j in pairs]
    where += [f"{convs[i].where} (same prompt as eval {w})" for i, w in same_prompt if i not in seen]
    found.add("error", "leakage", "training rows that also appear in the eval set", where)
    return {"eval": str(eval_path), "eval_rows": len(ev), "leaked_rows": len(where)}


def _embeddings(convs, wanted: bool, domain, seeds, min_relevance, found: Findings) -> dict:
    from . import embed

    if not wanted:
        return {"skipped": "embedding checks not requested (use --embeddings)"}
    reason = embed.available()
    if reason:
        return {"skipped": reason}
    seed_texts = [dedup.text_of(c) for c in load(seeds, strict=False, kinds=ANY_KIND).conversations] if seeds else None
    out = embed.analyse([dedup.text_of(c) for c in convs], domain, seed_texts, min_relevance)
    rel = out.get("relevance")
    if rel:
        low = [f"{convs[i].where} ({s:.2f})" for i, s in enumerate(rel["scores"]) if s < min_relevance]
        found.add("warning", "off_topic", f"rows with similarity below {min_relevance} to the domain", low)
    cov = out["diversity"].get("coverage")
    if cov is not None and cov < 0.5:
        found.add("info", "low_diversity", f"rows crowd into few topics (coverage {cov} of {out['diversity']['clusters']} clusters)",
                  ["whole dataset"])
    return out


def format_report(r: dict) -> str:
    t = r["tokens"]
    lines = [
        f"{r['file']}: {r['rows']} {'conversations' if r.get('kind', 'sft') == 'sft' else 'rows'}, format {r['format']}"
        + (f" ({r['kind']})" if r.get("kind", "sft") != "sft" else "")
        + (f"; {r['rows_read'] - r['rows']} of {r['rows_read']} rows unusable" if r.get("rows_read", r["rows"]) > r["rows"] else ""),
        f"  roles: {', '.join(f'{k} {v}' for k, v in sorted(r['roles'].items()))}",
        f"  tokens per conversation: min {t['min']}, median {t['median']}, p95 {t['p95']}, max {t['max']} "
        f"(max_length {t['max_length']}); {t['total']} in all",
    ]
    if "languages" in r:
        share = ", ".join(f"{k} {v:.0%}" for k, v in list(r["languages"]["share"].items())[:4])
        lines.append(f"  languages: {share} (of {r['languages']['sampled_rows']} rows)" if share
                     else "  languages: answers too short to tell")
        d = r["diversity"]
        lines.append(f"  answer diversity: distinct-1 {d['distinct_1']}, distinct-2 {d['distinct_2']}")
    emb = r.get("embeddings") or {}
    if "diversity" in emb:
        cov = emb["diversity"]
        lines.append(f"  embeddings: {emb['rows']} rows at {emb['rows_per_s']} rows/s; topic coverage {cov.get('coverage')} "
                     f"({cov.get('effective_clusters')} effective of {cov.get('clusters')} clusters)")
        if "relevance" in emb:
            rel = emb["relevance"]
            lines.append(f"  relevance to domain: min {rel['min']:.2f}, median {rel['median']:.2f}, max {rel['max']:.2f}")
    elif emb.get("skipped"):
        lines.append(f"  note: {emb['skipped']}")
    lines.append(f"  size: {r['size_guidance']}")
    if not r["findings"]:
        lines.append("  no problems found")
    for f in r["findings"]:
        lines.append(f"  {f['severity']}: {f['message']}: {f['count']} (e.g. {', '.join(f['examples'][:3])}) [{f['code']}]")
    return "\n".join(lines)
