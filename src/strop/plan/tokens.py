"""Count the tokens a run will see: the data rendered with the chat template (tokenizer only)."""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class TokenCount:
    rows: int
    tokens: int  # after truncation to max_length
    trainable_tokens: int
    longest: int  # the longest row after truncation: bounds the padded batch length
    padded_tokens_per_epoch: int  # what the model computes with, padding included
    truncated: int
    lengths: list[int]
    kept: list  # the Conversations counted, in order (for --measure)


def count(cfg, tok) -> TokenCount:
    """Render the training split exactly as `strop train` does and count."""
    from ..core.errors import StropError
    from ..data import load, split
    from ..data.render import render

    if not cfg.data:
        raise StropError("option data: no training file given (use --data FILE)")
    convs = load(cfg.data).conversations
    if not cfg.eval_data:
        convs, _ = split(convs, cfg.val_size, cfg.seed)
    lengths, kept, trainable, truncated = [], [], 0, 0
    for conv in convs:
        r = render(tok, conv, cfg.max_length, system_prompt=cfg.system_prompt, train_on_inputs=cfg.train_on_inputs)
        if r.n_trainable == 0:
            continue  # the trainer drops these too
        lengths.append(len(r.input_ids))
        kept.append(conv)
        trainable += r.n_trainable
        truncated += r.truncated
    if not lengths:
        raise StropError(f"{cfg.data}: no row has a trainable token at max_length {cfg.max_length}")
    return TokenCount(len(lengths), sum(lengths), trainable, max(lengths),
                      padded_tokens(lengths, cfg.micro_batch_size, cfg.seed), truncated, lengths, kept)


def worst_case(cfg, rows: int) -> TokenCount:
    """``rows`` rows of ``max_length`` tokens, every one trained on: the plan before there is data."""
    lengths = [cfg.max_length] * rows
    return TokenCount(rows, rows * cfg.max_length, rows * cfg.max_length, cfg.max_length, rows * cfg.max_length, 0,
                      lengths, [])


def padded_tokens(lengths: list[int], micro_batch: int, seed: int) -> int:
    """Tokens per epoch when random batches are padded to their longest row (TRL's collator)."""
    order = list(lengths)
    random.Random(seed).shuffle(order)
    return sum(max(order[i:i + micro_batch]) * len(order[i:i + micro_batch]) for i in range(0, len(order), micro_batch))
