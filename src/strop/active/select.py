"""ONE table of selection strategies, and the labelling file they produce.

A strategy gets the candidates (unit-length embeddings, one uncertainty value
each, embeddings of data already labelled) and returns ``k`` distinct
candidate indices. Adding a strategy is one function and one row in
``STRATEGIES``.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.errors import StropError
from .score import ScoreTable

DEDUP = 0.95  # cosine similarity at which two inputs count as the same question
HYBRID_FACTOR = 3  # hybrid spreads k picks over the 3k most uncertain candidates


@dataclass
class Candidates:
    emb: object  # (N, D) unit-length
    uncertainty: object  # (N,) higher = more unsure
    labelled: object  # (M, D) unit-length, may be empty


def _min_dist(emb, centers):
    """Euclidean distance of each row of emb to its nearest center, (N,)."""
    import numpy as np

    if len(centers) == 0:
        return np.full(len(emb), np.inf)
    sims = emb @ np.asarray(centers).T  # unit vectors: |a-b|^2 = 2 - 2 a.b
    return np.sqrt(np.clip(2.0 - 2.0 * sims.max(axis=1), 0.0, None))


def k_center_greedy(emb, k: int, labelled) -> list[int]:
    """Farthest-first traversal: each pick is the point farthest from everything chosen or labelled."""
    import numpy as np

    mind = _min_dist(emb, labelled)
    picked: list[int] = []
    if not np.isfinite(mind).any():
        # Nothing labelled yet: start at the most central point, then spread out.
        first = int(np.argmax(emb @ emb.mean(axis=0)))
        picked.append(first)
        mind = _min_dist(emb, emb[[first]])
    while len(picked) < k:
        mind[picked] = -1.0
        i = int(np.argmax(mind))
        picked.append(i)
        mind = np.minimum(mind, _min_dist(emb, emb[[i]]))
    return picked


def take_distinct(order, emb, k: int, threshold: float = DEDUP) -> list[int]:
    """The first k of ``order`` that are not near-duplicates of an earlier pick."""
    picked: list[int] = []
    for i in order:
        if all(float(emb[i] @ emb[j]) < threshold for j in picked):
            picked.append(int(i))
            if len(picked) == k:
                return picked
    # Fewer distinct items than k: fill with the rest so the budget is honoured.
    rest = [int(i) for i in order if int(i) not in picked]
    return picked + rest[: k - len(picked)]


def by_uncertainty(c: Candidates, k: int, rng) -> list[int]:
    import numpy as np

    order = np.argsort(-np.asarray(c.uncertainty), kind="stable")
    return take_distinct(order, c.emb, k)


def by_diversity(c: Candidates, k: int, rng) -> list[int]:
    return k_center_greedy(c.emb, k, c.labelled)


def by_hybrid(c: Candidates, k: int, rng) -> list[int]:
    import numpy as np

    top = np.argsort(-np.asarray(c.uncertainty), kind="stable")[: max(k, HYBRID_FACTOR * k)]
    return [int(top[i]) for i in k_center_greedy(c.emb[top], k, c.labelled)]


def by_random(c: Candidates, k: int, rng) -> list[int]:
    return [int(i) for i in rng.choice(len(c.emb), size=k, replace=False)]


@dataclass(frozen=True)
class Strategy:
    name: str
    pick: Callable[[Candidates, int, object], list[int]]
    summary: str
    needs_uncertainty: bool


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("uncertainty", by_uncertainty, "the items the model is least sure about", True),
    Strategy("diversity", by_diversity, "k-center greedy: items far from each other and from labelled data", False),
    Strategy("hybrid", by_hybrid, f"k-center greedy among the {HYBRID_FACTOR}k most uncertain items", True),
    Strategy("random", by_random, "uniform random sample (the baseline)", False),
)}

# Uncertainty signals: name -> how to turn the column into "higher = more unsure".
SIGNALS: dict[str, Callable[[float], float]] = {
    "margin": lambda v: 1.0 - v,
    "entropy_mean": float,
    "entropy_max": float,
    "nll_mean": float,
    "perplexity": float,
    "disagreement": float,
    "semantic_spread": float,
}


def uncertainty(table: ScoreTable, signal: str | None = None) -> tuple[str, list[float]]:
    name = signal or ("margin" if "margin" in table.signals else "entropy_mean")
    if name not in SIGNALS:
        raise StropError(f"option --signal: unknown signal {name!r} (valid: {', '.join(SIGNALS)})")
    if name not in table.signals:
        raise StropError(f"option --signal: the scores have no {name!r} (they have: {', '.join(table.signals)})")
    return name, [SIGNALS[name](v) for v in table.signals[name]]


def select(table: ScoreTable, budget: int, strategy: str, *, signal: str | None = None, seed: int = 0,
           dedup: float | None = DEDUP, warn=print) -> tuple[list[int], list[float]]:
    """Indices into ``table`` to label next, and every item's uncertainty.

    Items at cosine >= ``dedup`` to already-labelled inputs are skipped (None: keep all).
    """
    import numpy as np

    if strategy not in STRATEGIES:
        raise StropError(f"option --strategy: unknown {strategy!r} (valid: {', '.join(STRATEGIES)})")
    if budget < 1:
        raise StropError(f"option --budget: must be at least 1, got {budget}")
    if STRATEGIES[strategy].needs_uncertainty or signal or table.signals:
        _, unc = uncertainty(table, signal)
    else:
        unc = [0.0] * len(table)
    emb = np.asarray(table.embeddings, dtype=np.float32)
    labelled = np.asarray(table.labelled, dtype=np.float32).reshape(-1, emb.shape[1])
    keep = np.arange(len(emb))
    if len(labelled) and dedup is not None:
        keep = np.flatnonzero((emb @ labelled.T).max(axis=1) < dedup)
        if len(keep) < len(emb):
            warn(f"warning: skipped {len(emb) - len(keep)} of {len(emb)} pool items that are near-duplicates "
                 f"(cosine >= {dedup}) of already-labelled inputs")
    if budget > len(keep):
        raise StropError(f"option --budget: {budget} is more than the {len(keep)} selectable pool items "
                         f"({len(emb)} scored, {len(emb) - len(keep)} near-duplicates of labelled data)")
    cands = Candidates(emb[keep], np.asarray(unc)[keep], labelled)
    picked = STRATEGIES[strategy].pick(cands, budget, np.random.default_rng(seed))
    return [int(keep[i]) for i in picked], unc


def output_paths(output: str | Path) -> tuple[Path, Path]:
    out = Path(output)
    if out.suffix.lower() == ".csv":
        return out.with_suffix(".jsonl"), out
    return out.with_suffix(".jsonl"), out.with_suffix(".csv")


CSV_FIELDS = ["id", "input", "answer", "reviewed", "draft", "uncertainty", "sha"]


def write_selection(table: ScoreTable, picked: list[int], unc: list[float], output: str | Path,
                    strategy: str) -> tuple[Path, Path]:
    """The labelling file: JSONL (kept as the record) and CSV (for people), drafts pre-filled."""
    jsonl, csv_path = output_paths(output)
    for p in (jsonl, csv_path):
        if p.exists():
            raise StropError(f"{p}: already exists; refusing to overwrite a labelling file (choose another --output)")
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for rank, i in enumerate(picked, start=1):
        it = table.items[i]
        rows.append({"rank": rank, "id": it.id, "input": it.text, "messages": it.messages, "sha": it.sha,
                     "draft": table.drafts[i], "uncertainty": round(float(unc[i]), 6), "strategy": strategy,
                     "choices": table.choices})
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({"id": r["id"], "input": r["input"], "answer": r["draft"], "reviewed": "",
                        "draft": r["draft"], "uncertainty": r["uncertainty"], "sha": r["sha"]})
    return jsonl, csv_path
