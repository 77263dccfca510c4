"""`--shard i/n`: run one part of a batch job, so any scheduler can fan it out.

A job with ``--shard i/n`` handles the i-th of n contiguous, nearly equal
slices of its input rows (0-based), and writes a part that a merge command
puts back together: `strop data check-merge`, `strop al score-merge`.
Contiguous slices keep the input order across parts, so "the first
occurrence" means the same thing after a merge as in one run.

Slurm:  ``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import StropError


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def bounds(self, n: int) -> tuple[int, int]:
        return self.index * n // self.count, (self.index + 1) * n // self.count

    def take(self, rows: list) -> list:
        start, stop = self.bounds(len(rows))
        return rows[start:stop]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def as_dict(self) -> dict:
        return {"index": self.index, "count": self.count}


def parse(text: str | None, option: str = "--shard") -> Shard | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise StropError(f"option {option}: expected I/N with 0 <= I < N (e.g. 0/4 for the first of four parts), got {text!r}")
    return Shard(int(m.group(1)), int(m.group(2)))


def in_order(parts: list[tuple[str, dict, object]], what: str) -> list:
    """The payloads sorted by shard index; refuse a set with a part missing, doubled or from another split.

    ``parts``: (where it came from, its ``{"index", "count"}``, payload).
    """
    if not parts:
        raise StropError(f"no {what} parts given")
    counts = {info["count"] for _, info, _ in parts}
    if len(counts) != 1:
        raise StropError(f"{what} parts come from different splits (N = {', '.join(map(str, sorted(counts)))}); "
                         "merge the parts of one run")
    (n,) = counts
    seen: dict[int, str] = {}
    for where, info, _ in parts:
        if info["index"] in seen:
            raise StropError(f"{where}: shard {info['index']}/{n} given twice (also {seen[info['index']]})")
        seen[info["index"]] = where
    missing = [str(i) for i in range(n) if i not in seen]
    if missing:
        raise StropError(f"{what}: shard(s) {', '.join(missing)} of {n} missing; every part is needed for a merge")
    return [payload for _, _, payload in sorted(parts, key=lambda p: p[1]["index"])]
