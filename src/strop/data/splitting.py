"""`strop data split`: seeded, optionally stratified, near-duplicate-aware train/eval split.

Rows are grouped first (near-duplicate clusters, plus augmented rows with the
row they came from), then whole groups are assigned, so no cluster straddles
train and eval. Augmented rows never go to eval.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict

from ..core.errors import StropError
from . import dedup
from .records import Conversation

AUGMENT_KEY = "strop_augmented"


def _stratum(conv: Conversation, column: str | None) -> str:
    if not column:
        return ""
    row = conv.row or {}
    if column not in row:
        raise StropError(f"option --stratify: {conv.where} has no column {column!r}")
    return str(row[column])


def check_val_size(val_size: float) -> float:
    """``--val-size``: a fraction in (0, 1), or a whole count of rows (1, 2, ...), as `strop train` reads it."""
    if not math.isfinite(val_size) or val_size <= 0:
        raise StropError(f"option --val-size: {val_size} must be a fraction in (0, 1) or a whole count of rows")
    if val_size >= 1 and val_size != int(val_size):
        raise StropError(f"option --val-size: {val_size} is neither a fraction below 1 nor a whole count of rows "
                         f"(e.g. 0.1 or {int(val_size)})")
    return val_size


def grouped_split(convs: list[Conversation], val_size: float, seed: int, stratify: str | None = None,
                  near_threshold: float = 0.8) -> tuple[list[Conversation], list[Conversation]]:
    """(train, eval); refuses, in one line, a split that would leave either side empty."""
    check_val_size(val_size)
    if not val_size < len(convs):
        raise StropError(f"option --val-size: {val_size} must be a fraction below 1 or a count below {len(convs)}")
    texts = [dedup.text_of(c) for c in convs]
    cluster = dedup.clusters(texts, near_threshold)
    origin = {dedup.exact_key(t): cluster[i] for i, t in enumerate(texts)}
    groups: dict[int, list[int]] = defaultdict(list)
    augmented: set[int] = set()
    for i, c in enumerate(convs):
        tag = (c.row or {}).get(AUGMENT_KEY)
        if isinstance(tag, dict):
            augmented.add(i)
            groups[origin.get(tag.get("origin_key"), cluster[i])].append(i)
        else:
            groups[cluster[i]].append(i)
    strata: dict[str, list[int]] = defaultdict(list)
    for g, members in groups.items():
        strata[_stratum(convs[members[0]], stratify)].append(g)
    rng = random.Random(seed)
    frac = val_size if val_size < 1 else val_size / len(convs)
    val: set[int] = set()
    for key in sorted(strata):
        gs = sorted(strata[key])
        rng.shuffle(gs)
        want = round(frac * sum(len(groups[g]) for g in gs))
        taken = 0
        for g in gs:
            if abs(taken + len(groups[g]) - want) > abs(taken - want):
                continue  # this group would overshoot; a smaller one may fit
            val.update(groups[g])
            taken += len(groups[g])
    # An augmented row whose group went to eval would leak its original: it is dropped, not moved.
    train = [c for i, c in enumerate(convs) if i not in val]
    evals = [c for i, c in enumerate(convs) if i in val and i not in augmented]
    grouped = f" in {len(groups)} groups (near-duplicates and augmented rows stay together)" \
        if len(groups) < len(convs) else ""
    if not evals:
        raise StropError(f"option --val-size: {val_size} puts no row in eval ({len(convs)} rows{grouped}); "
                         "raise --val-size")
    if not train:
        raise StropError(f"option --val-size: {val_size} leaves no row for training ({len(convs)} rows{grouped}); "
                         "lower --val-size" + (" or raise --near-threshold" if grouped else ""))
    return train, evals
