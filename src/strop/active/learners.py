"""ONE table of learners the oracle loop can retrain each round.

``logreg``: logistic regression on frozen all-MiniLM-L6-v2 embeddings of the
input (cheap: a round takes milliseconds, so many seeds fit on a CPU).
``sft``: LoRA (or any strop method) fine-tuning of a causal LM through
``strop.train.run.train`` for a few steps, scored through the same code as
``strop al score``. A learner fits on labelled items and predicts, for other
items, an answer plus uncertainty signals (the columns ``select`` reads).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .pool import PoolItem


@dataclass(frozen=True)
class Learner:
    name: str
    fit: Callable  # (cfg, items, emb, seed, workdir) -> fitted model
    predict: Callable  # (cfg, fitted, items, emb) -> (answers, {signal: values})
    summary: str


# -- logistic regression on frozen embeddings ------------------------------
def _fit_logreg(cfg, items: list[PoolItem], emb, seed: int, workdir: Path):
    from sklearn.linear_model import LogisticRegression

    y = [it.answer for it in items]
    if len(set(y)) < 2:
        return ("constant", y[0])  # one class seen so far: nothing to separate yet
    return LogisticRegression(C=cfg.logreg_c, max_iter=2000, random_state=seed).fit(emb, y)


def _predict_logreg(cfg, fitted, items: list[PoolItem], emb):
    import numpy as np

    if isinstance(fitted, tuple):
        n = len(items)
        return [fitted[1]] * n, {"margin": [0.0] * n, "entropy_mean": [1.0] * n}
    probs = fitted.predict_proba(emb)  # (N, C)
    top2 = np.sort(probs, axis=1)[:, ::-1][:, :2]
    entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=1)
    answers = [str(c) for c in fitted.classes_[probs.argmax(axis=1)]]
    return answers, {"margin": (top2[:, 0] - top2[:, 1]).tolist(), "entropy_mean": entropy.tolist()}


# -- fine-tuning a language model ------------------------------------------
def _fit_sft(cfg, items: list[PoolItem], emb, seed: int, workdir: Path):
    from ..core.config import TrainConfig
    from ..methods.options import check
    from ..train.run import train

    data = workdir / "labelled.jsonl"
    workdir.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({"messages": it.messages + [{"role": "assistant", "content": it.answer}]}) + "\n"
                            for it in items))
    steps = max(1, cfg.train_steps)
    tc = TrainConfig(base_model=cfg.model, data=str(data), method=cfg.method, output_dir=str(workdir / "run"),
                     max_steps=steps, learning_rate=cfg.learning_rate, val_size=0,
                     micro_batch_size=4, seed=seed, report_to="none", early_stopping_patience=0,
                     logging_steps=max(1, steps // 2))
    return str(train(check(tc), progress=False).root)


def _predict_sft(cfg, fitted: str, items: list[PoolItem], emb):
    from .score import model_signals

    return model_signals(fitted, items, labels=cfg.labels or None, samples=cfg.samples,
                         max_new_tokens=cfg.max_new_tokens, seed=0)


LEARNERS: dict[str, Learner] = {lr.name: lr for lr in (
    Learner("logreg", _fit_logreg, _predict_logreg, "logistic regression on frozen all-MiniLM-L6-v2 embeddings"),
    Learner("sft", _fit_sft, _predict_sft, "a few steps of strop SFT (LoRA by default) on the labelled rows"),
)}
