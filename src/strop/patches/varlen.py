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

On a CPU computing in bf16 each example's attention is written out as two
batched matmuls and a softmax instead of a call to SDPA: PyTorch's CPU flash
kernel works in small blocks that suit long sequences, and at the few hundred
tokens of a fine-tuning example its bf16 backward took 2.4x as long as the
written-out one here (docs/performance.md has the figures). In float32 the
flash kernel is as fast (the written-out version measured 9% slower), so
float32 runs keep SDPA per example, as CUDA does.

The maths is the same attention over the same pairs; tests/test_performance.py
checks loss and every gradient against padded batches to 1e-5 in fp32.
``per_example_attention: false`` turns it off.
"""
from __future__ import annotations

import contextlib

NAME = "strop_per_example_sdpa"
# CPU tensors: "bf16" writes attention out (_cpu_causal) when it computes in 16 bits and leaves
# float32 to SDPA's flash kernel, as fast there; "always" / "never" force one (tests).
CPU_MATMUL = "bf16"


def _use_matmul(query) -> bool:
    import torch

    if query.device.type != "cpu" or CPU_MATMUL == "never":
        return False
    if CPU_MATMUL == "always":
        return True
    half = (torch.bfloat16, torch.float16)
    return (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in half) or query.dtype in half


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    length = query.shape[2]
    # Attention sinks live in the mask SDPA gets; cutting the row would drop them.
    plain_only = kwargs.get("s_aux") is not None
    window = kwargs.get("sliding_window")
    if (position_ids is not None and not plain_only and query.shape[0] == 1 and key.shape[2] == length
            and position_ids.shape[-1] == length):
        starts = (position_ids.reshape(-1) == 0).nonzero().flatten().tolist()
        if starts and starts[0] == 0 and len(starts) > 1:
            bounds = starts + [length]
            spans = list(zip(bounds[:-1], bounds[1:]))
            # a window no example outgrows changes nothing inside one: the causal cut is exact
            windowed = bool(window) and max(b - a for a, b in spans) > window
            if _use_matmul(query) and not (dropout and module.training) and not windowed:
                return _cpu_causal(query, key, value, spans, scaling), None
            pieces = [
                sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b],
                                       _band(b - a, window, query.device) if windowed else None,
                                       dropout=dropout, scaling=scaling, is_causal=not windowed)[0]
                for a, b in spans
            ]
            return torch.cat(pieces, dim=1), None  # (batch, tokens, heads, head_dim), as SDPA returns
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def _band(n: int, window: int, device):
    """The sliding-window causal mask of one example, as transformers defines it: token i sees the tokens
    j <= i with i - j < window."""
    import torch

    i = torch.arange(n, device=device)
    gap = i[:, None] - i[None, :]
    return ((gap >= 0) & (gap < window))[None, None]


def _cpu_causal(query, key, value, spans, scaling):
    """Causal attention of each (start, end) span alone; returns (batch, tokens, heads, head_dim)."""
    import torch

    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
    else:
        dtype = torch.promote_types(query.dtype, value.dtype)
    with torch.autocast("cpu", enabled=False):
        out = _span_attention().apply(query[0].to(dtype), key[0].to(dtype), value[0].to(dtype), tuple(spans), scale)
    return out.unsqueeze(0).transpose(1, 2)


def _span_probs(q, k, a, b, scale, biases, groups):
    """Softmax weights of one span, shape (kv_heads, groups * n, n), and the stacked queries."""
    import torch

    n = b - a
    kv_heads, d = k.shape[0], k.shape[-1]
    qg = q[:, a:b].reshape(kv_heads, groups * n, d)  # the query heads that share a kv head, stacked
    if n not in biases:  # 0 on and below the diagonal, -inf above: causal
        causal = torch.zeros(n, n, dtype=q.dtype, device=q.device).masked_fill_(
            torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        biases[n] = causal.repeat(groups, 1)
    scores = torch.baddbmm(biases[n], qg, k[:, a:b].transpose(1, 2), alpha=scale)
    return torch.softmax(scores, dim=-1), qg


_FUNCTION = None


def _span_attention():
    """Flash-style at example granularity: keeps q, k and v only and recomputes each example's
    softmax in backward instead of storing (heads x n x n) weights for every layer."""
    global _FUNCTION
    if _FUNCTION is not None:
        return _FUNCTION
    import torch

    class SpanAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, spans, scale):
            heads, tokens, d = q.shape
            kv_heads = k.shape[0]
            groups = heads // kv_heads
            out = q.new_empty(kv_heads, groups, tokens, d)
            biases: dict = {}
            for a, b in spans:
                probs, _ = _span_probs(q, k, a, b, scale, biases, groups)
                out[:, :, a:b] = torch.bmm(probs, v[:, a:b]).view(kv_heads, groups, b - a, d)
            out = out.view(heads, tokens, d)
            ctx.save_for_backward(q, k, v)
            ctx.spans, ctx.scale = spans, scale
            return out

        @staticmethod
        def backward(ctx, grad_out):
            q, k, v = ctx.saved_tensors
            heads, tokens, d = q.shape
            kv_heads = k.shape[0]
            groups = heads // kv_heads
            grad_out = grad_out.to(q.dtype).reshape(kv_heads, groups, tokens, d)
            dq = torch.empty_like(q).view(kv_heads, groups, tokens, d)
            dk, dv = torch.empty_like(k), torch.empty_like(v)
            biases: dict = {}
            for a, b in ctx.spans:
                n = b - a
                probs, qg = _span_probs(q, k, a, b, ctx.scale, biases, groups)  # recomputed, not stored
                g = grad_out[:, :, a:b].reshape(kv_heads, groups * n, d)
                dv[:, a:b] = torch.bmm(probs.transpose(1, 2), g)
                dprobs = torch.bmm(g, v[:, a:b].transpose(1, 2))
                dscores = torch.ops.aten._softmax_backward_data(dprobs, probs, -1, probs.dtype).mul_(ctx.scale)
                dq[:, :, a:b] = torch.bmm(dscores, k[:, a:b]).view(kv_heads, groups, n, d)
                dk[:, a:b] = torch.bmm(dscores.transpose(1, 2), qg)
            return dq.view(heads, tokens, d), dk, dv, None, None

    _FUNCTION = SpanAttention
    return _FUNCTION


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
