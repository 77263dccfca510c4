"""Fold a run's trained weights into its base model, and check that nothing changed.

``merge(run_dir)`` returns the merged plain transformers model and the largest
absolute difference between merged and unmerged logits on a probe prompt.
Methods whose maths allows it (``Method.mergeable``: lora, dora, ia3, full)
merge; the others (soft prompts, prefixes, non-linear bottleneck adapters)
keep their adapter for export and serving.
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import methods, models
from ..core.errors import StropError

PROBE = [
    {"role": "user", "content": "Who are you, and what can you do for me today?"},
    {"role": "assistant", "content": "I am a helpful assistant. Ask me anything."},
]


def run_method(target: str) -> str:
    """The method a run (or its final/ directory) was trained with."""
    path = models.resolve(target)
    info = path / "strop_run.json" if isinstance(path, Path) else None
    if info is None or not info.is_file():
        raise StropError(f"{target}: not a strop run (no final/strop_run.json)")
    return json.loads(info.read_text())["method"]


def probe_ids(tok):
    import torch

    from ..models.templates import render_chat

    text = render_chat(tok, PROBE, add_generation_prompt=False)
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])  # (1, T)


def merge(run_dir: str, dtype: str = "float32"):
    """-> (merged model, max abs logit difference merged vs unmerged)."""
    import torch

    name = run_method(run_dir)
    method = methods.get(name)
    if not method.mergeable:
        raise StropError(f"{run_dir}: --method {name} cannot be merged into the base; "
                         "export and serve it with its adapter")
    model, tok = models.load(str(run_dir), dtype)
    ids = probe_ids(tok)
    with torch.no_grad():
        before = model(input_ids=ids).logits  # (1, T, V)
        merged = model.merge_and_unload() if method.saves_adapter else model
        merged.eval()
        after = merged(input_ids=ids).logits
    return merged, (after - before).abs().max().item()
