"""Training FLOPs, time and cost from the counted tokens and a device's peak."""
from __future__ import annotations

import math

from .shape import ModelShape

# Share of peak that fine-tuning reaches. GPU: typical measured MFU for small
# and mid-size models with HF Trainer (an assumption, not measured here). CPU:
# measured with strop's defaults on the project's 2-core AVX-512 BF16 machine
# (2026-11-26): 27% of the bf16 peak for the demo (micro-batches of at most
# 341 tokens) and 53% for the throughput benchmark (about 1,500 tokens per
# micro-batch); 30% sits near the small-batch end. The plan prints the figure;
# --measure replaces it with a measured rate.
UTILISATION = {"cuda": 0.35, "cpu": 0.30}
# Mean tokens of one general row of forgetting protection (system prompt, prompt and the base's sampled
# answer) with the default model: 120 over the demo run's 50 rows (docs/quality.md). Each such row
# costs about a training row's forward and backward of that length (kl: plus the base's forward once).
PRESERVE_ROW_TOKENS = 120


# The longest general row kl can add to a micro-batch: the longest shipped prompt rendered with the default
# model's template (85 tokens) and an answer of preserve.MAX_NEW_TOKENS (96) with its end of turn.
PRESERVE_ROW_MAX_TOKENS = 184


def preserve_batch_tokens(cfg, nproc: int = 1, strategy: str = "ddp") -> int:
    """Tokens ``preserve: kl`` adds to the widest micro-batch where its general rows are held at the same time
    as the task's (train/preserve_kl.py): joined to the packed row with ``preserve_pack``, or in a forward
    beside the task's in one backward with several processes; at most ceil(ratio x micro_batch_size) rows."""
    import math

    from ..methods.preserve import mode_for, ratio_for

    mode, _ = mode_for(cfg, strategy)
    together = nproc > 1 or (getattr(cfg, "preserve_pack", False) and getattr(cfg, "padding_free", False))
    if mode != "kl" or not together:
        return 0  # otherwise the rows get a forward and backward of their own, after the task's
    return math.ceil(ratio_for(cfg, mode) * cfg.micro_batch_size) * PRESERVE_ROW_MAX_TOKENS


def preserve_tokens_per_epoch(cfg, rows: int, strategy: str = "ddp") -> tuple[str, int]:
    """(mode, extra tokens per epoch) that ``preserve`` adds to a run of ``rows`` training rows."""
    from ..methods.preserve import mode_for, ratio_for

    mode, _ = mode_for(cfg, strategy)
    if mode == "none":
        return mode, 0
    return mode, round(rows * ratio_for(cfg, mode) * PRESERVE_ROW_TOKENS)


def flops_per_token(shape: ModelShape, method: str, seq_len: int, checkpointing: float = 0.0) -> float:
    """Forward 2N, backward 4N for full training; frozen weights skip their weight gradient (2N).
    ``checkpointing``: the share of layers run forward twice (True = all)."""
    n = shape.linear_params() + shape.vocab * shape.hidden  # the LM head multiplies too; lookups do not
    per_n = 6 if method == "full" else 4
    per_n += 2 * float(checkpointing)  # one extra forward of the checkpointed layers
    attention = 6 * shape.layers * seq_len * shape.q_dim  # QK^T and AV, causal half, x3 for backward
    return per_n * n + attention


def time_and_cost(shape: ModelShape, cfg, tokens, device, *, utilisation: float | None = None,
                  tokens_per_s: float | None = None, price_per_hour: float = 0.0, checkpointing: float = 0.0,
                  nproc: int = 1, strategy: str = "ddp", peak_tflops: float | None = None) -> dict:
    """Steps, time per epoch and total, and cost; tokens_per_s (measured) overrides the FLOP model.

    With ``nproc`` data-parallel processes a step takes nproc times the rows and
    the rate is nproc times one device's (ideal scaling: an upper bound); the
    price is per device-hour.
    """
    per_step = cfg.micro_batch_size * cfg.gradient_accumulation_steps * nproc
    steps_per_epoch = math.ceil(tokens.rows / per_step)
    steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_epochs * steps_per_epoch)
    epochs = steps / steps_per_epoch
    avg_len = tokens.padded_tokens_per_epoch / tokens.rows
    fpt = flops_per_token(shape, cfg.method, round(avg_len), checkpointing)
    util = utilisation if utilisation is not None else UTILISATION[device.kind]
    source = "measured"
    if tokens_per_s is None:
        peak = device.bf16_tflops if peak_tflops is None else peak_tflops
        tokens_per_s = peak * 1e12 * util / fpt
        source = f"{peak:g} TFLOP/s peak x {util:.0%} utilisation"
    if nproc > 1:
        tokens_per_s *= nproc
        source += f" x {nproc} processes"
    preserve, extra = preserve_tokens_per_epoch(cfg, tokens.rows, strategy)
    epoch_s = (tokens.padded_tokens_per_epoch + extra) / tokens_per_s
    total_s = epoch_s * epochs
    return {
        "preserve": preserve, "preserve_tokens_per_epoch": extra,
        "steps": steps, "steps_per_epoch": steps_per_epoch, "epochs": round(epochs, 3),
        "flops_per_token": fpt, "total_flops": fpt * tokens.padded_tokens_per_epoch * epochs,
        "tokens_per_s": round(tokens_per_s, 1), "rate_source": source,
        "epoch_s": round(epoch_s, 1), "total_s": round(total_s, 1),
        "price_per_hour": price_per_hour, "cost": round(total_s / 3600 * price_per_hour * nproc, 2),
    }
