"""Score only the positions the loss uses.

TRL's SFT loss runs the LM head in tiles (never the whole tokens x vocabulary
logits), but off Triton devices it scores *every* position and zeroes the
prompt ones afterwards: on a CPU the prompt tokens cost a full
49,152-entry softmax each, forward and backward, for nothing. TRL does this
because on compiled backends (Neuron) a varying number of positions would
recompile the tiles every batch; eager CPU execution has no such cost.

While a run trains, :func:`labelled_positions_only` makes TRL's fused head
take its compact path (``hidden[mask]``, the path it already uses on CUDA with
Triton) everywhere, leaving the tile kernels themselves as they are. The loss
and gradients are the same sums over the same positions; tests/test_performance.py
checks them against the full path to 1e-5 in fp32. ``score_labelled_only:
false`` turns it off.

It also narrows the head's vocabulary tiles (``VOCAB_TILE``): the same sums in
smaller pieces. And on a CPU it replaces the backward pass of TRL's head when
only the hidden states need a gradient (every adapter method): TRL adds each
tile's product into a float32 gradient with a float32 matmul, because CUDA can
multiply bf16 tiles into a float32 sum and a CPU cannot; in float32 that one
product took about a quarter of a LoRA step here. :func:`_cpu_backward` writes
the bf16 gradient of a block of rows across the whole vocabulary and multiplies
it once: the sum over the vocabulary still accumulates in float32 inside the
matmul and is rounded to bf16 once, as every other bf16 layer's backward is,
instead of twelve float32 matmuls. In float32 runs it is the same sums.

It relies on names in ``trl.trainer.utils`` (``_use_triton``,
``_CHUNKED_LOGPROB_CHUNK_SIZE``, ``_ChunkedLogProbFunction``); when a TRL
version lacks them the run goes on unpatched and says so once.
"""
from __future__ import annotations

import contextlib
import sys

# Vocabulary entries per LM-head tile. TRL uses 32,768; off Triton each tile
# makes several fp32 temporaries of (scored tokens x tile), a gigabyte or
# more of a CPU run's peak at 2,048 tokens (docs/planning.md). A quarter of it
# costs more loop iterations of the same matmul and nothing else. CPU only.
VOCAB_TILE = 4096
# Rows per block in the CPU backward: a (rows x vocabulary) bf16 gradient, 24 MB at 49,152 entries.
BACKWARD_ROWS = 256
_CPU_FUNCTION = {}


def _cpu_backward_function(original):
    """A subclass of TRL's chunked log-prob function with the CPU backward below."""
    if original in _CPU_FUNCTION:
        return _CPU_FUNCTION[original]

    class CpuChunkedLogProb(original):
        @staticmethod
        def backward(ctx, grad_logprobs, grad_entropy=None, *rest):
            hidden, weight, bias, targets, log_z, _ = ctx.saved_tensors
            simple = (hidden.device.type == "cpu" and grad_logprobs is not None and grad_entropy is None
                      and bias is None and not ctx.kernel_args.get("HAS_SOFTCAP") and ctx.needs_input_grad[0]
                      and not any(ctx.needs_input_grad[1:3]))
            if not simple:  # weight or bias gradients, entropy terms, softcapping: TRL's own backward
                return original.backward(ctx, grad_logprobs, grad_entropy, *rest)
            grad = _cpu_backward(hidden, weight, targets, log_z, grad_logprobs, ctx.compute_dtype,
                                 ctx.chunk_size, ctx.kernel_args["logit_scale"] * ctx.kernel_args["inv_t"])
            return (grad,) + (None,) * 8

    _CPU_FUNCTION[original] = CpuChunkedLogProb
    return CpuChunkedLogProb


def _cpu_backward(hidden, weight, targets, log_z, grad_logprobs, dtype, tile, scale):
    """d(sum_i g_i log p_i(target_i)) / d hidden for logits = scale * hidden @ weight.T, one block of rows at a time."""
    import torch

    rows, vocab = hidden.shape[0], weight.shape[0]
    w = weight.to(dtype)
    g = grad_logprobs.float()
    grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
    for r0 in range(0, rows, BACKWARD_ROWS):
        r1 = min(r0 + BACKWARD_ROWS, rows)
        h = hidden[r0:r1].to(dtype)
        block = torch.empty(r1 - r0, vocab, dtype=dtype, device=hidden.device)
        local = targets[r0:r1]
        for v0 in range(0, vocab, tile):
            v1 = min(v0 + tile, vocab)
            probs = torch.mm(h, w[v0:v1].t()).float().mul_(scale).sub_(log_z[r0:r1, None]).exp_()
            d_logits = probs.mul_(-g[r0:r1, None])  # d log p_t / d z_j = 1[j = t] - p_j, times g
            hit = (local >= v0) & (local < v1)
            if hit.any():
                idx = hit.nonzero().squeeze(-1)
                d_logits[idx, local[idx] - v0] += g[r0:r1][idx]
            block[:, v0:v1] = d_logits
        grad_hidden[r0:r1] = torch.mm(block, w).float().mul_(scale)
    return grad_hidden.to(hidden.dtype)


@contextlib.contextmanager
def labelled_positions_only(enabled: bool = True):
    if not enabled:
        yield False
        return
    try:
        import trl.trainer.utils as tu
    except ImportError:  # pragma: no cover - TRL is a hard dependency
        yield False
        return
    original = getattr(tu, "_use_triton", None)
    if original is None or not hasattr(tu, "add_fused_lm_head"):
        print("strop: this TRL version has no fused LM head hook; scoring every position", file=sys.stderr)
        yield False
        return

    def compact_everywhere(device):
        return device.type in ("cpu", "cuda") or original(device)

    tu._use_triton = compact_everywhere
    import torch

    # On CUDA the Triton kernel folds each tile in place: TRL's wide tiles and its backward suit it there.
    cpu = not torch.cuda.is_available()
    function = getattr(tu, "_ChunkedLogProbFunction", None) if cpu else None
    if function is not None:
        tu._ChunkedLogProbFunction = _cpu_backward_function(function)
    tile = getattr(tu, "_CHUNKED_LOGPROB_CHUNK_SIZE", None) if cpu else None
    if tile is not None:
        tu._CHUNKED_LOGPROB_CHUNK_SIZE = min(tile, VOCAB_TILE)
    try:
        yield True
    finally:
        tu._use_triton = original
        if function is not None:
            tu._ChunkedLogProbFunction = function
        if tile is not None:
            tu._CHUNKED_LOGPROB_CHUNK_SIZE = tile
