"""Turn loaded conversations into the tokenized rows the trainer consumes."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..core.config import TrainConfig
from ..core.errors import StropError
from ..data import Dataset, load, split
from ..data.render import render


@dataclass
class Prepared:
    train: list[dict]
    eval: list[dict]
    report: dict = field(default_factory=dict)
    anchors: list[dict] = field(default_factory=list)  # preserve kl: general rows the loss keeps near the base


def _tokenize(tok, convs, cfg: TrainConfig, report: dict, part: str) -> list[dict]:
    rows, dropped, truncated = [], [], 0
    for conv in convs:
        r = render(tok, conv, cfg.max_length, system_prompt=cfg.system_prompt, train_on_inputs=cfg.train_on_inputs)
        truncated += r.truncated
        if r.n_trainable == 0:
            dropped.append(conv.where)  # e.g. the prompt alone fills max_length
            continue
        # sample_id names the example in samples.jsonl (train/samples.py); the model never sees it
        rows.append({"input_ids": r.input_ids, "labels": r.labels, "sample_id": conv.where})
    report[part] = {
        "rows": len(rows),
        "dropped_no_trainable_tokens": len(dropped),
        "dropped_examples": dropped[:20],
        "truncated": truncated,
        "tokens": sum(len(x["input_ids"]) for x in rows),
        "trainable_tokens": sum(sum(1 for t in x["labels"] if t != -100) for x in rows),
    }
    return rows


def prepare(cfg: TrainConfig, tok) -> Prepared:
    if not cfg.data:
        raise StropError("option data: no training file given (use --data FILE)")
    train_ds: Dataset = load(cfg.data)
    report = {"data": cfg.data, "format": train_ds.format, "rows_read": len(train_ds)}
    if cfg.eval_data:
        eval_ds = load(cfg.eval_data)
        train_convs, eval_convs = train_ds.conversations, eval_ds.conversations
        report.update(eval_data=cfg.eval_data, eval_format=eval_ds.format)
    else:
        train_convs, eval_convs = split(train_ds.conversations, cfg.val_size, cfg.seed)
    train = _tokenize(tok, train_convs, cfg, report, "train")
    evalr = _tokenize(tok, eval_convs, cfg, report, "eval")
    if not train:
        raise StropError(f"{cfg.data}: no row has a trainable token after masking and truncation to max_length {cfg.max_length}")
    mode, general = _general_rows(cfg, tok, len(train), report, train_convs)
    if mode == "kl":
        return Prepared(train, evalr, report, anchors=general)
    return Prepared(train + general, evalr, report)


def _general_rows(cfg: TrainConfig, tok, n_train: int, report: dict, train_convs: list) -> tuple[str, list[dict]]:
    """(mode, rows): the base model's own answers to general prompts (train/preserve.py), mixed into
    training (replay) or held apart as the rows on which the KL term keeps the model near the base (kl)."""
    from . import distributed
    from .preserve import mode_for, replay_conversations

    mode, why = mode_for(cfg, distributed.strategy(), report.get("format", ""))
    report["preserve"] = {"mode": mode, "why": why}
    if mode == "none":
        return mode, []
    asked = ([m.content for c in train_convs for m in c.messages if m.role == "user"]
             if cfg.preserve_select == "nearest" else None)  # only the nearest pick reads the task's prompts
    convs, record = replay_conversations(cfg, tok, n_train, mode, asked)
    rows = _tokenize(tok, convs, cfg, report, "replay")
    kl = {"weight": cfg.preserve_weight} if mode == "kl" else {}
    if kl and cfg.preserve_warmup:
        kl["warmup"] = cfg.preserve_warmup
    report["preserve"] = record | {"why": why} | kl
    return mode, rows
