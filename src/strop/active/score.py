"""Per-input uncertainty signals from a model, plus input embeddings for diversity.

For every pool item the model answers greedily and we keep, from its own
logits: mean/max token entropy, the answer's mean log-likelihood (and
perplexity); with candidate labels, the probability margin between the two
likeliest labels; with sampling, how often sampled answers disagree and how
far apart they are in embedding space. Higher entropy/perplexity/
disagreement and a lower margin all mean "the model is unsure here".
"""
from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import StropError
from .pool import PoolItem

SCORES = "scores.jsonl"
EMBEDDINGS = "embeddings.npy"
LABELLED = "labelled_embeddings.npy"
META = "meta.json"


@dataclass
class ScoreTable:
    """Everything selection needs; one row per pool item, in pool order."""

    items: list[PoolItem]
    drafts: list[str]
    signals: dict[str, list[float]]  # signal name -> one value per item
    embeddings: object  # (N, D) unit-length float32
    labelled: object  # (M, D) embeddings of already-labelled inputs
    choices: list[str] | None = None  # classification labels, when given
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)


# -- model signals ---------------------------------------------------------
def _greedy(engine, ids: list[int], max_new_tokens: int) -> tuple[str, list[float], list[float]]:
    """Greedy answer with per-token entropy and log-probability of the chosen token."""
    import torch

    tok = engine.tok
    with torch.inference_mode():
        out = engine.model.generate(
            input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            output_logits=True, return_dict_in_generate=True)
    new = out.sequences[0, len(ids):]  # (T,)
    logp = torch.log_softmax(torch.stack(out.logits, 0)[:, 0].float(), dim=-1)  # (T, V)
    entropy = -(logp.exp() * logp).sum(-1)  # (T,)
    chosen = logp.gather(1, new[:, None])[:, 0]  # (T,)
    text_ids = new[:-1] if len(new) and new[-1] == tok.eos_token_id else new
    return tok.decode(text_ids, skip_special_tokens=True).strip(), entropy.tolist(), chosen.tolist()


def label_probs(engine, ids: list[int], labels: list[str]) -> list[float]:
    """P(label | prompt) over the candidates: exact answer + end-of-turn, renormalised."""
    import torch

    tok = engine.tok
    conts = [tok(lab, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for lab in labels]
    width = len(ids) + max(len(c) for c in conts)
    batch = torch.full((len(labels), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for i, c in enumerate(conts):
        batch[i, : len(ids) + len(c)] = torch.tensor(ids + c)
        mask[i, : len(ids) + len(c)] = 1
    with torch.inference_mode():
        logits = engine.model(input_ids=batch, attention_mask=mask).logits
        # prompt tuning returns its virtual positions' logits first
        logp = torch.log_softmax(logits[:, logits.shape[1] - width:].float(), -1)  # (L, W, V)
    totals = []
    for i, c in enumerate(conts):
        pos = torch.arange(len(ids) - 1, len(ids) - 1 + len(c))  # logits at t predict token t+1
        totals.append(logp[i, pos, torch.tensor(c)].sum().item())
    return torch.softmax(torch.tensor(totals), 0).tolist()


def margin_of(probs: list[float]) -> float:
    top = sorted(probs, reverse=True) + [0.0]
    return top[0] - top[1]


def _item_signals(engine, item: PoolItem, labels: list[str] | None, samples: int,
                  max_new_tokens: int, seed: int) -> tuple[str, dict, list[str]]:
    from ..metrics import normalize

    ids = engine.encode(item.messages)
    text, entropy, chosen = _greedy(engine, ids, max_new_tokens)
    nll = -sum(chosen) / max(1, len(chosen))
    sig = {"entropy_mean": sum(entropy) / max(1, len(entropy)), "entropy_max": max(entropy, default=0.0),
           "nll_mean": nll, "perplexity": math.exp(min(nll, 50.0))}
    draft = text
    if labels:
        probs = label_probs(engine, ids, labels)
        sig["margin"] = margin_of(probs)
        draft = labels[max(range(len(labels)), key=probs.__getitem__)]
    drawn = [engine.complete_ids(ids, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed + j).text.strip()
             for j in range(samples)]
    if drawn:
        top = Counter(normalize(s) for s in drawn).most_common(1)[0][1]
        sig["disagreement"] = 1.0 - top / len(drawn)
    return draft, sig, drawn


def _semantic_spread(drawn: list[list[str]]) -> list[float]:
    """1 - mean pairwise cosine similarity of each item's sampled answers."""
    from ..models.embeddings import embed

    flat = [s or " " for group in drawn for s in group]
    vecs = embed(flat)
    out, start = [], 0
    for group in drawn:
        v = vecs[start:start + len(group)]
        start += len(group)
        n = len(group)
        sims = (v @ v.T).sum() - n  # off-diagonal sum
        out.append(float(1.0 - sims / (n * (n - 1))) if n > 1 else 0.0)
    return out


def model_signals(model: str, items: list[PoolItem], *, labels: list[str] | None = None, samples: int = 3,
                  max_new_tokens: int = 32, seed: int = 0) -> tuple[list[str], dict[str, list[float]]]:
    """Drafts and signal columns for ``items`` from the model named ``model``."""
    from ..models.engine import Engine

    engine = Engine(model)
    drafts, rows, drawn = [], [], []
    for item in items:
        draft, sig, samples_out = _item_signals(engine, item, labels, samples, max_new_tokens, seed)
        drafts.append(draft)
        rows.append(sig)
        drawn.append(samples_out)
    signals = {name: [r[name] for r in rows] for name in rows[0]}
    if samples > 1:
        signals["semantic_spread"] = _semantic_spread(drawn)
    return drafts, signals


# -- the scores directory --------------------------------------------------
def score_pool(model: str, pool: str, output: str, *, labels: list[str] | None = None, train: str | None = None,
               samples: int = 3, max_new_tokens: int = 32, seed: int = 0, warn=print, shard=None) -> ScoreTable:
    """`strop al score`: read the pool, drop inputs already trained on, score, write ``output``.

    ``shard`` (strop.core.shard.Shard): score only that slice of the pool; every item's
    signals depend on the item alone, so `strop al score-merge` (active/shards.py)
    puts the parts together into the table one job would have written.
    """
    from ..models.embeddings import embed
    from .pool import drop_overlap, labelled_texts, read_pool

    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StropError(f"{out}: already exists and is not an empty directory; choose another --output")
    if samples < 0 or max_new_tokens < 1:
        raise StropError("options --samples must be >= 0 and --max-new-tokens >= 1")
    if labels is not None and len(set(labels)) < 2:
        raise StropError(f"option --labels: need at least two distinct labels, got {labels}")
    items = read_pool(pool)
    if shard is not None:
        items = shard.take(items)
        if not items:
            raise StropError(f"option --shard: part {shard} of the pool is empty; use fewer parts")
    train_texts = labelled_texts(train) if train else []
    items, dropped = drop_overlap(items, train_texts, train or "")
    if dropped:
        warn(f"warning: {dropped} of {dropped + len(items)} pool inputs already appear in {train}; dropped them")
    if not items:
        raise StropError(f"{pool}: every pool input is already in {train}; nothing left to score")
    drafts, signals = model_signals(model, items, labels=labels, samples=samples,
                                    max_new_tokens=max_new_tokens, seed=seed)
    table = ScoreTable(items, drafts, signals, embed([it.text for it in items]), embed(train_texts), labels,
                       {"model": model, "pool": str(pool), "train": train, "samples": samples,
                        **({"shard": shard.as_dict()} if shard is not None else {})})
    write_scores(table, out)
    return table


def write_scores(table: ScoreTable, out: Path) -> None:
    """Write the directory atomically, so a half-written one is never read."""
    import numpy as np

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with open(tmp / SCORES, "w", encoding="utf-8") as fh:
        for i, it in enumerate(table.items):
            row = {"id": it.id, "messages": it.messages, "sha": it.sha, "draft": table.drafts[i],
                   **{k: v[i] for k, v in table.signals.items()}}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    np.save(tmp / EMBEDDINGS, table.embeddings)
    np.save(tmp / LABELLED, table.labelled)
    (tmp / META).write_text(json.dumps({**table.meta, "choices": table.choices, "n": len(table),
                                        "signals": list(table.signals)}, indent=2))
    if out.exists() and not any(out.iterdir()):
        out.rmdir()
    os.replace(tmp, out)


def load_scores(path: str | Path) -> ScoreTable:
    import numpy as np

    path = Path(path)
    if not (path / SCORES).is_file() or not (path / META).is_file():
        raise StropError(f"{path}: not a scores directory (no {SCORES}); run `strop al score` first")
    meta = json.loads((path / META).read_text())
    items, drafts, signals = [], [], {name: [] for name in meta["signals"]}
    for line in (path / SCORES).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        items.append(PoolItem(row["id"], row["messages"], f"{path / SCORES}:{len(items) + 1}"))
        drafts.append(row["draft"])
        for name in signals:
            signals[name].append(row[name])
    return ScoreTable(items, drafts, signals, np.load(path / EMBEDDINGS), np.load(path / LABELLED),
                      meta.get("choices"), meta)
