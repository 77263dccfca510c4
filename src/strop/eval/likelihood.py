"""Log-likelihood of a model on rendered conversations: perplexity and per-example NLL.

Only assistant tokens are scored (labels come from strop.data.render); the prompt is context.
"""
from __future__ import annotations

import math

from ..core.errors import StropError
from ..models.cache import cache_kw, returned_cache


def perplexity(model, tok, conversations: list, max_length: int, system_prompt: str = "", batch_size: int = 8) -> dict:
    """Token-weighted mean NLL over assistant tokens only, and its exponential.

    Labels come from ``render`` (-100 outside assistant turns), so the prompt
    is context but never scored. Rows are right-padded; padding is masked out
    of attention and labels, so batching does not change the result.
    """
    if not conversations:
        raise StropError("perplexity: no conversations to score (the eval set is empty)")
    nll, tokens = example_nll(model, tok, conversations, max_length, system_prompt, batch_size)
    total_tokens = sum(tokens)
    if not total_tokens:
        raise StropError(f"perplexity: no assistant tokens left within max_length={max_length}")
    loss = sum(nll) / total_tokens
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": total_tokens}


def example_nll(model, tok, conversations: list, max_length: int, system_prompt: str = "",
                batch_size: int = 8) -> tuple[list[float], list[int]]:
    """Per conversation: summed NLL of its assistant tokens and how many there were.

    A conversation truncated past every answer gets (0.0, 0), so the lists stay
    aligned with the input (bootstrap and paired tests need that).
    """
    from ..data.render import render

    rendered = [render(tok, c, max_length, system_prompt=system_prompt) for c in conversations]
    return token_nll(model, tok, [(r.input_ids, r.labels) for r in rendered], batch_size)


def token_nll(model, tok, rows: list[tuple[list[int], list[int]]], batch_size: int = 8) -> tuple[list[float], list[int]]:
    """Summed NLL of the labelled tokens (label != -100) of each (input_ids, labels) row."""
    import torch
    import torch.nn.functional as F

    from ..data.render import IGNORE

    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    nll: list[float] = []
    count: list[int] = []
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            batch = rows[i:i + batch_size]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, (row_ids, row_labels) in enumerate(batch):
                n = len(row_ids)
                ids[j, :n] = torch.tensor(row_ids)
                labels[j, :n] = torch.tensor(row_labels)
                mask[j, :n] = 1
            # position t predicts token t+1; only positions some row scores need the (large) vocab projection
            keep = ((labels[:, 1:] != IGNORE).any(dim=0)).nonzero().flatten()  # (K,)
            if len(keep) == 0:
                nll += [0.0] * len(batch)
                count += [0] * len(batch)
                continue
            logits = _scored_logits(model, ids.to(device), mask.to(device), keep.to(device))  # (B, K, V)
            targets = labels[:, keep + 1].to(device)  # (B, K)
            # rows of (B x K, V): the vocab is contiguous, where (B, V, K) made cross_entropy reduce along
            # a stride of K (measured: two thirds of the tiny model's bias probe went there)
            losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE,
                                     reduction="none").view(targets.shape)  # (B, K)
            nll += losses.sum(dim=1).tolist()
            count += (targets != IGNORE).sum(dim=1).tolist()
    return nll, count


SHARED_PREFIX_MIN = 16  # tokens every row of a batch must share before the prefix is run once for all


def _scored_logits(model, ids, mask, keep):
    """The logits at positions ``keep`` of each row, computing the tokens all rows share only once.

    Rows scored together often open alike: the same system prompt and template, a bias probe's
    template with only one word swapped. That common prefix (up to the first scored position) goes
    through the model once; its cache is copied to every row, and the rows run only their rest.
    Causal attention makes this exact: a position sees only the tokens before it, the same either
    way. Models whose cache cannot be copied per row are run whole.
    """
    from ..patches.prompt_cache import virtual_positions

    virtual = virtual_positions(model)
    if virtual is not None:  # prompt or prefix tuning: whole rows, the positions moved past the virtual tokens
        return model(input_ids=ids, attention_mask=mask, logits_to_keep=keep + virtual).logits.float()
    batch = ids.shape[0]
    shared = int(keep[0]) + 1 if batch > 1 else 0  # position keep[0] is scored, so its logits are needed
    if shared:
        differs = (ids[:, :shared] != ids[:1, :shared]).any(dim=0).nonzero()
        shared = int(differs[0]) if len(differs) else shared
        shared = min(shared, int(keep[0]), int(mask.sum(dim=1).min()))  # no logits, no padding in the prefix
    if shared >= SHARED_PREFIX_MIN:
        past = returned_cache(model(input_ids=ids[:1, :shared], use_cache=True, logits_to_keep=1))
        if hasattr(past, "batch_repeat_interleave"):
            past.batch_repeat_interleave(batch)
            return model(input_ids=ids[:, shared:], attention_mask=mask, use_cache=True, **cache_kw(model, past),
                         logits_to_keep=keep - shared).logits.float()
    return model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits.float()
