"""Held-out prompts that exports are verified on: the run's eval data, else strop's built-in sets."""
from __future__ import annotations

from itertools import zip_longest
from pathlib import Path

import yaml

DEMO_DATA = Path(__file__).resolve().parents[1] / "demo_data"
BUILT_IN = ("general_questions.jsonl", "persona_heldout.jsonl")


def _files(run: Path) -> list[Path]:
    cfg = run / "config.yaml"
    if cfg.is_file():
        eval_data = (yaml.safe_load(cfg.read_text()) or {}).get("eval_data")
        if eval_data and Path(eval_data).exists():
            return [Path(eval_data)]
    return [DEMO_DATA / name for name in BUILT_IN]


def held_out(run: Path, n: int) -> list[list[dict]]:
    """Up to ``n`` chats cut just before their first assistant turn, taken in turn from each file
    (so the built-in persona questions, where a fine-tune shows, are not crowded out by the general ones)."""
    from ..data.load import load

    per_file: list[list[list[dict]]] = []
    for path in _files(run):
        chats = []
        for conv in load(path, strict=False).conversations:
            msgs = []
            for m in conv.messages:
                if m.role == "assistant":
                    break
                msgs.append({"role": m.role, "content": m.content})
            if msgs:
                chats.append(msgs)
        per_file.append(chats)
    mixed = [c for row in zip_longest(*per_file) for c in row if c is not None]
    return mixed[:n]
