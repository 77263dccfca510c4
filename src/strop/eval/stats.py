"""Bootstrap confidence intervals and paired tests over per-example statistics.

Every headline number is an aggregate of per-example rows: a mean of 0/1 hits,
a ratio of summed NLL to summed tokens, or sacrebleu's corpus score from summed
n-gram counts. Keeping the rows (``Stats``) lets one resampling routine give an
interval for all of them, and lets two systems be compared on the *same*
resampled examples (paired), which is what "is the difference real?" needs.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

DEFAULT_RESAMPLES = 1000
EXACT_PERMUTATION_MAX_N = 12  # 2**12 = 4096 sign patterns: cheap enough to enumerate


@dataclass
class Stats:
    """Per-example rows (n, d) and how column sums over any subset become the metric."""

    rows: np.ndarray
    aggregate: Callable[[np.ndarray, int], float]  # (column sums (d,), n) -> value
    is_mean: bool = False  # one column, aggregate = mean: resampled without a Python loop

    def value(self, idx: np.ndarray | None = None) -> float:
        rows = self.rows if idx is None else self.rows[idx]
        return float(self.aggregate(rows.sum(axis=0), len(rows)))

    def __len__(self) -> int:
        return len(self.rows)


def mean_stats(values: list[float]) -> Stats:
    """A metric that is the plain mean of one number per example (hit, ROUGE, accuracy)."""
    return Stats(np.asarray(values, dtype=float).reshape(-1, 1), lambda s, n: s[0] / n, is_mean=True)


def ratio_stats(numerators: list[float], denominators: list[float], transform=None) -> Stats:
    """sum(num) / sum(den), optionally transformed (exp for perplexity from NLL / tokens)."""
    rows = np.column_stack([np.asarray(numerators, float), np.asarray(denominators, float)])
    fn = transform or (lambda x: x)
    return Stats(rows, lambda s, n: fn(s[0] / s[1]) if s[1] else float("nan"))


def resample_indices(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """(resamples, n) example indices drawn with replacement; shared by paired systems."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def resampled(stats: Stats, idx: np.ndarray) -> np.ndarray:
    if stats.is_mean:
        return stats.rows[idx, 0].mean(axis=1)  # vectorised fast path for plain means
    return np.array([stats.value(i) for i in idx])


def bootstrap_ci(stats: Stats, idx: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the metric."""
    vals = resampled(stats, idx)
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return (float("nan"), float("nan"))
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(vals, [tail, 100 - tail])
    return (float(lo), float(hi))


def paired_comparison(a: Stats, b: Stats, idx: np.ndarray, seed: int = 0, level: float = 0.95) -> dict:
    """a - b on the same examples: bootstrap CI of the difference and a permutation p-value."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs the same examples ({len(a)} vs {len(b)})")
    diff = a.value() - b.value()
    deltas = resampled(a, idx) - resampled(b, idx)
    deltas = deltas[np.isfinite(deltas)]
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(deltas, [tail, 100 - tail]) if len(deltas) else (float("nan"),) * 2
    return {"diff": diff, "ci": [float(lo), float(hi)], "p": permutation_p(a, b, resamples=idx.shape[0], seed=seed)}


def _swap_masks(n: int, resamples: int, seed: int) -> tuple[np.ndarray, bool]:
    if n <= EXACT_PERMUTATION_MAX_N:
        return np.array(list(itertools.product([False, True], repeat=n)), dtype=bool), True
    return np.random.default_rng(seed + 1).random((resamples, n)) < 0.5, False


def permutation_p(a: Stats, b: Stats, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> float:
    """Two-sided paired permutation test: swap each example's two systems at random.

    Under "no difference" the labels a/b are exchangeable per example, so the
    observed |difference| is compared with the differences after swaps. Small
    sets (n <= 12) are enumerated exactly; larger ones sampled (p includes the
    +1 correction so it is never 0).
    """
    observed = abs(a.value() - b.value())
    if observed == 0:
        return 1.0
    masks, exact = _swap_masks(len(a), resamples, seed)
    count = 0
    for mask in masks:
        ra = np.where(mask[:, None], b.rows, a.rows)
        rb = np.where(mask[:, None], a.rows, b.rows)
        d = abs(a.aggregate(ra.sum(axis=0), len(ra)) - b.aggregate(rb.sum(axis=0), len(rb)))
        count += int(d >= observed - 1e-12)
    if exact:
        return float(count / len(masks))
    return float((count + 1) / (len(masks) + 1))


def significant(p: float, alpha: float = 0.05) -> bool:
    return bool(not math.isnan(p) and p < alpha)
