"""Training curves over steps, read from a run's metrics.jsonl (beyond the loss curve of html.py).

Which keys exist depends on the objective (TRL names them): DPO, ORPO, SimPO,
CPO and KTO log ``rewards/chosen``, ``rewards/rejected`` and
``rewards/margins``, all but KTO ``rewards/accuracies``; KTO and GRPO log ``kl``; GRPO logs ``reward`` and
``rewards/<function>/mean``; a reward model logs ``accuracy`` and ``margin``;
SFT with ``eval_generate_samples`` logs ``gen_bleu``, ``gen_rougeL`` ...
(train/gen_metrics.py). Each panel is drawn when at least one of its keys was
logged, so one table serves every objective. Held-out values (``eval_``
prefix) are drawn as markers on the same axes.
"""
from __future__ import annotations

from pathlib import Path

from .plots import figure

# (file name, title, y label, keys; a key ending in "/" matches every key under it that ends in "/mean")
PANELS = [
    ("pref_rewards.png", "Implicit rewards of chosen and rejected answers", "reward",
     ["rewards/chosen", "rewards/rejected"]),
    ("pref_margin.png", "Reward margin (chosen - rejected)", "margin", ["rewards/margins", "margin"]),
    ("pref_accuracy.png", "Preference accuracy (chosen rewarded above rejected)", "share",
     ["rewards/accuracies", "accuracy"]),
    ("pref_kl.png", "KL from the reference model", "KL", ["kl"]),
    ("grpo_reward.png", "Reward of sampled completions", "reward", ["reward", "rewards/"]),
]
GEN_PANELS = [
    ("gen_rouge.png", "Greedy answers to held-out prompts: ROUGE and exact match", "score (0-1)",
     ["gen_rougeL", "gen_rouge1", "gen_exact_match", "gen_normalized_exact_match"]),
    ("gen_bleu.png", "Greedy answers to held-out prompts: BLEU", "BLEU (0-100)", ["gen_bleu"]),
]


def _series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows
            if "step" in r and isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]


def _keys(rows: list[dict], wanted: list[str]) -> list[str]:
    """The logged keys a panel draws, in the panel's order."""
    seen = list(dict.fromkeys(k for r in rows for k in r))
    out = []
    for w in wanted:
        if w.endswith("/"):
            out += [k for k in seen if k.startswith(w) and k.endswith("/mean") and k.count("/") == 2]
        elif w in seen:
            out.append(w)
    return out


def plot_curves(rows: list[dict], out_dir: Path, panels: list | None = None) -> list[str]:
    """Draw every panel (default: PANELS) that has data into ``out_dir``; returns the file names written."""
    out_dir = Path(out_dir)
    written = []
    for name, title, ylabel, wanted in PANELS if panels is None else panels:
        keys = _keys(rows, wanted)
        evals = _keys(rows, [f"eval_{k}" for k in keys])
        if not keys and not evals:
            continue
        fig = figure(7.2, 3.4)
        ax = fig.add_subplot()
        for key in keys:
            ax.plot(*zip(*_series(rows, key)), marker="." if key.startswith("gen_") else None, label=key)
        for key in evals:
            ax.plot(*zip(*_series(rows, key)), marker="o", linestyle="--", label=key)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_dir / name)
        written.append(name)
    return written
