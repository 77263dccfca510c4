"""Does it fit, what makes it fit, and which method suits the data and hardware."""
from __future__ import annotations

import dataclasses

from .memory import Setup, breakdown
from .shape import ModelShape

# Ordered by how little each change alters what is learned.
FIXES = (
    ("micro_batch", "halve micro_batch_size and double gradient_accumulation_steps (same effective batch, no quality change)"),
    ("checkpointing", "gradient checkpointing (same result, ~30% slower: one extra forward)"),
    ("optim8", "8-bit AdamW (adamw_8bit; near-identical results in published comparisons)"),
    ("lora", "LoRA instead of full fine-tuning (fewer trainable weights; usually close on narrow tasks)"),
    ("qlora", "QLoRA: 4-bit base weights + LoRA (needs a CUDA GPU and bitsandbytes; small quality cost)"),
    ("max_length", "a shorter max_length (truncates long examples: changes what is learned)"),
)


def _apply(fix: str, s: Setup) -> Setup | None:
    r = dataclasses.replace
    if fix == "micro_batch":
        return r(s, micro_batch=s.micro_batch // 2, tokens=s.tokens // 2) if s.micro_batch > 1 else None
    if fix == "checkpointing":  # every layer (a run may recompute only some, checkpoint_layers)
        every = s.gradient_checkpointing and not s.checkpoint_layers
        return None if every else r(s, gradient_checkpointing=True, checkpoint_layers=0)
    if fix == "optim8":
        return r(s, optim="adamw_8bit") if s.optim == "adamw" and s.device_kind == "cuda" else None
    if fix == "lora":
        return r(s, method="lora") if s.method == "full" else None
    if fix == "qlora":
        return r(s, method="qlora") if s.method in ("lora", "dora") and s.device_kind == "cuda" else None
    if fix == "max_length":
        return r(s, seq_len=s.seq_len // 2, tokens=s.tokens // 2) if s.seq_len >= 128 else None
    raise ValueError(fix)


def fit(shape: ModelShape, s: Setup, budget_mb: float) -> dict:
    """Whether the setup fits; if not, the cumulative changes (least quality impact first) that make it fit."""
    total = breakdown(shape, s)["total"]
    if total <= budget_mb:
        return {"fits": True, "total_mb": total, "budget_mb": round(budget_mb), "fixes": []}
    steps, cur = [], s
    for fix, why in FIXES:
        while (nxt := _apply(fix, cur)) is not None:
            cur = nxt
            mb = breakdown(shape, cur)["total"]
            steps.append({"change": why, "setting": _setting(fix, cur), "total_mb": mb})
            if mb <= budget_mb:
                return {"fits": False, "total_mb": total, "budget_mb": round(budget_mb), "fixes": steps, "fixed": True}
            if fix not in ("micro_batch", "max_length"):
                break
    return {"fits": False, "total_mb": total, "budget_mb": round(budget_mb), "fixes": steps, "fixed": False}


def _setting(fix: str, s: Setup) -> str:
    return {"micro_batch": f"micro_batch_size {s.micro_batch}", "checkpointing": "gradient_checkpointing true, checkpoint_layers all",
            "optim8": "optim adamw_8bit", "lora": "method lora", "qlora": "method qlora",
            "max_length": f"max_length {s.seq_len}"}[fix]


def method_advice(shape: ModelShape, s: Setup, rows: int, tokens: int, budget_mb: float, goal: str = "") -> list[str]:
    """A short recommendation with its reasons. Rules of thumb, stated as such."""
    out = []
    full = breakdown(shape, dataclasses.replace(s, method="full"))["total"]
    lora = breakdown(shape, dataclasses.replace(s, method="lora"))["total"]
    if rows < 50:
        out.append(f"{rows} training rows is very little: prefer lora with a small lora_r (4-8) or prompt_tuning, "
                   "and watch eval loss for overfitting")
    elif tokens > 5_000_000 and full <= budget_mb:
        out.append(f"{tokens:,} tokens is enough data for full fine-tuning to pay off, and it fits ({full:,.0f} MB)")
    else:
        out.append(f"lora suits {rows} rows / {tokens:,} tokens: it adapts style and narrow tasks with "
                   f"{100 * breakdown(shape, dataclasses.replace(s, method='lora'))['trainable_params'] / shape.total_params():.2f}% "
                   "of the weights trained and keeps general ability better than full training")
    if lora > budget_mb and s.device_kind == "cuda":
        out.append("even lora does not fit in this card's memory in 16-bit: qlora (4-bit base) is the usual way out")
    if full > budget_mb >= lora:
        out.append(f"full fine-tuning needs {full:,.0f} MB here, more than the {budget_mb:,.0f} MB budget")
    if goal == "knowledge":
        out.append("new factual knowledge is learned poorly by any fine-tuning; consider retrieval instead")
    return out
