"""Exact and near-duplicate detection (MinHash + LSH from datasketch).

Near duplicates are grouped into clusters (union-find over LSH candidates
whose estimated Jaccard similarity passes the threshold), so split can keep a
cluster on one side and clean can keep one row per cluster.
"""
from __future__ import annotations

import hashlib
import math
import re

from ..core.errors import StropError
from .records import Conversation

NUM_PERM = 64
_WORD = re.compile(r"\w+")


def text_of(conv: Conversation) -> str:
    return "\n".join(m.content for m in conv.messages if m.role != "system")


def prompt_of(conv: Conversation) -> str:
    return "\n".join(m.content for m in conv.prompt_messages if m.role != "system")


def exact_key(text: str) -> str:
    return hashlib.sha1(" ".join(text.lower().split()).encode()).hexdigest()


def shingles(text: str, n: int = 3) -> set[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {" ".join(words).encode()} if words else {b""}
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


_PRIME = (1 << 61) - 1
_MAX32 = (1 << 32) - 1


def _permutations():
    import numpy as np

    rng = np.random.RandomState(1)
    return (rng.randint(1, _PRIME, NUM_PERM, dtype=np.uint64), rng.randint(0, _PRIME, NUM_PERM, dtype=np.uint64))


def minhashes(texts: list[str]) -> list:
    """datasketch MinHash objects, with signatures computed in numpy a chunk of rows at a time.

    ``MinHash.update`` hashes each shingle with SHA-1 in Python (~40 s for
    100,000 rows); CRC32 plus one vectorised min per chunk gives signatures
    of datasketch's pre-2.0 ("legacy") affine scheme many times faster. All
    signatures compared in one run come from here, so schemes never mix.
    """
    import zlib

    import numpy as np
    from datasketch import LeanMinHash

    a, b = _permutations()
    out = []
    for start in range(0, len(texts), 2000):
        sets = [shingles(t) for t in texts[start:start + 2000]]
        hv = np.fromiter((zlib.crc32(s) for ss in sets for s in ss), dtype=np.uint64)
        offsets = np.cumsum([0] + [len(ss) for ss in sets[:-1]])
        phv = ((hv[:, None] * a + b) % _PRIME) & np.uint64(_MAX32)  # (shingles, NUM_PERM)
        for sig in np.minimum.reduceat(phv, offsets, axis=0):
            out.append(LeanMinHash(seed=1, hashvalues=sig, scheme="legacy"))
    return out


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def check_threshold(threshold: float) -> float:
    """``--near-threshold``: a Jaccard similarity in (0, 1]; 1 means exact duplicates only (no MinHash)."""
    try:
        ok = math.isfinite(threshold) and 0 < threshold <= 1
    except TypeError:
        ok = False
    if not ok:
        raise StropError(f"option --near-threshold: {threshold} is not a similarity in (0, 1] "
                         "(MinHash Jaccard of word 3-grams; 1 finds exact duplicates only)")
    return threshold


def clusters(texts: list[str], threshold: float = 0.8) -> list[int]:
    """A cluster id per text (the index of its first member); exact copies always share one."""
    check_threshold(threshold)
    uf = _UnionFind(len(texts))
    first: dict[str, int] = {}
    for i, t in enumerate(texts):
        key = exact_key(t)
        if key in first:
            uf.union(first[key], i)
        else:
            first[key] = i
    if threshold < 1.0:
        _near(texts, threshold, uf, list(first.values()))
    return [uf.find(i) for i in range(len(texts))]


def _near(texts: list[str], threshold: float, uf: _UnionFind, unique: list[int]) -> None:
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    hashes = dict(zip(unique, minhashes([texts[i] for i in unique])))
    for i, m in hashes.items():
        for j in lsh.query(m):
            # LSH returns candidates; the estimate confirms them.
            if m.jaccard(hashes[j]) >= threshold:
                uf.union(j, i)
        lsh.insert(i, m)


def overlap(train: list[str], other: list[str], threshold: float = 0.8) -> list[tuple[int, int]]:
    """(train index, other index) pairs that are exact or near copies: train/eval leakage."""
    from datasketch import MinHashLSH

    check_threshold(threshold)
    keys = {exact_key(t): j for j, t in enumerate(other)}
    pairs = [(i, keys[exact_key(t)]) for i, t in enumerate(train) if exact_key(t) in keys]
    if threshold >= 1.0:
        return pairs
    found = {i for i, _ in pairs}
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    other_hashes = minhashes(other)
    for j, m in enumerate(other_hashes):
        lsh.insert(j, m)
    for i, m in enumerate(minhashes(train)):
        if i in found:
            continue
        hits = [j for j in lsh.query(m) if m.jaccard(other_hashes[j]) >= threshold]
        if hits:
            pairs.append((i, min(hits)))
    return sorted(pairs)
