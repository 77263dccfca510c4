"""`strop al score-merge`: one scores directory from the parts of `strop al score --shard I/N`.

Every signal, draft and embedding of a pool item depends on that item alone
(sampling seeds are per item), so concatenating the parts in shard order
gives the table one job over the whole pool would have written; the
labelled-data embeddings are the same in every part and are taken once.
The parts must agree on model, pool, training file, labels and settings.
"""
from __future__ import annotations

from pathlib import Path

from ..core.errors import StropError
from ..core.shard import in_order
from .score import ScoreTable, load_scores, write_scores

# meta fields that must be equal in every part of one scoring run
SAME = ("model", "pool", "train", "samples", "choices", "signals")


def merge_scores(parts: list[str], output: str) -> ScoreTable:
    import numpy as np

    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StropError(f"{out}: already exists and is not an empty directory; choose another --output")
    loaded = []
    for p in parts:
        table = load_scores(p)
        if "shard" not in table.meta:
            raise StropError(f"{p}: not written by `strop al score --shard I/N`")
        loaded.append((p, table.meta["shard"], table))
    tables = in_order(loaded, "al score")
    first = tables[0]
    for p, _, table in loaded:
        for key in SAME:
            if table.meta.get(key) != first.meta.get(key):
                raise StropError(f"{p}: {key} differs from the other parts ({table.meta.get(key)!r} vs "
                                 f"{first.meta.get(key)!r}); merge the parts of one run")
    ids = [it.id for t in tables for it in t.items]
    if len(set(ids)) != len(ids):
        raise StropError("the parts score some pool ids twice; were they cut from different pools?")
    meta = {k: v for k, v in first.meta.items() if k not in ("shard", "n", "signals", "choices")}
    merged = ScoreTable(
        items=[it for t in tables for it in t.items],
        drafts=[d for t in tables for d in t.drafts],
        signals={name: [v for t in tables for v in t.signals[name]] for name in first.signals},
        embeddings=np.concatenate([t.embeddings for t in tables]),
        labelled=first.labelled,
        choices=first.choices,
        meta=meta | {"merged_parts": len(tables)},
    )
    write_scores(merged, out)
    return merged
