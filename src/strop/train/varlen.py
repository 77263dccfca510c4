"""Attention per example inside a padding-free row, on any device.

A padding-free micro-batch is one row holding several examples, told apart
by ``position_ids`` that restart at 0. With SDPA, transformers turns that
into one block-diagonal (tokens x tokens) mask and PyTorch computes every
pair of positions before masking most of them: for 8 examples of 400 tokens
that is 8x the attention work of the examples themselves. FlashAttention's
varlen kernel avoids it on CUDA; nothing does on a CPU. While a run trains,
:func:`per_example_attention` registers an attention function that cuts the
row at each position reset and runs causal SDPA on each example alone, and
falls back to plain SDPA (with its mask) for any other batch, so padded
batches, evaluation and generation behave as before.

The maths is the same attention over the same pairs; tests/test_performance.py
checks loss and every gradient against padded batches to 1e-5 in fp32.
``per_example_attention: false`` turns it off.
"""
from __future__ import annotations

import contextlib

NAME = "strop_per_example_sdpa"


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    length = query.shape[2]
    if (position_ids is not None and query.shape[0] == 1 and key.shape[2] == length
            and position_ids.shape[-1] == length):
        starts = (position_ids.reshape(-1) == 0).nonzero().flatten().tolist()
        if starts and starts[0] == 0 and len(starts) > 1:
            bounds = starts + [length]
            pieces = [
                sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None,
                                       dropout=dropout, scaling=scaling, is_causal=True)[0]
                for a, b in zip(bounds[:-1], bounds[1:])
            ]
            return torch.cat(pieces, dim=1), None  # (batch, tokens, heads, head_dim), as SDPA returns
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, _attention)
    # Same masks as SDPA, so padded batches keep theirs; packed rows are cut instead.
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def _configs(model):
    seen = []
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and all(cfg is not c for c in seen) and hasattr(cfg, "_attn_implementation"):
            seen.append(cfg)
    return seen


@contextlib.contextmanager
def per_example_attention(model, enabled: bool = True):
    """Swap SDPA for the per-example version on every config of ``model`` that uses SDPA, then restore."""
    configs = [c for c in _configs(model) if c._attn_implementation == "sdpa"] if enabled else []
    if configs:
        register()
    for c in configs:
        c._attn_implementation = NAME
    try:
        yield bool(configs)
    finally:
        for c in configs:
            c._attn_implementation = "sdpa"
