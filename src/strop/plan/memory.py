"""Peak training memory, broken down, from the model's shape and the run's settings.

Every term is counted from structure (parameters, bytes per value, tensors
autograd keeps per token); the few constants that are not (the process's
runtime footprint, how many activation-sized tensors a decoder layer keeps)
were measured on this project's CPU machine and are named below with how.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .shape import ModelShape
from .sharding import per_device

MB = 2**20
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Resident size of a Python process after importing torch, transformers, peft
# and trl, plus the tokenizer and allocator slack, on CPU (measured on this
# project's machine, 2026-11-26: 545 MB after the imports alone). On a GPU the
# process memory is host RAM and the device instead holds the CUDA context and
# kernels.
RUNTIME_MB = {"cpu": 600.0, "cuda": 600.0}
# TRL 1.16 computes the loss with a chunked LM head (trl/kernels/chunked_logprob.py):
# logits are never materialised whole; it projects tiles of at most 4096
# tokens x 32768 vocabulary entries. On a device without Triton (CPU) every
# position is scored and the tile's element-wise pass makes several more
# tile-sized temporaries; with Triton only labelled positions are scored in
# a fused kernel. Live tile copies at the backward peak:
LM_HEAD_TILE = (4096, 32768)
LM_HEAD_TILES_LIVE = {"cpu": 6.0, "cuda": 2.0}
# Activation values autograd keeps per token per decoder layer, in units of
# (hidden, kv width, intermediate); read from LlamaDecoderLayer's forward
# (norm inputs and outputs, q/k/v, rotary copies, attention output, the MLP's
# gate, up, activation and product) with SDPA attention (no T x T matrix).
ACT_COEF = (10.0, 4.0, 4.0)
# LoRA-style dropout keeps its own copy of each adapted layer's input: the
# mask, the dropped-out values and, under autocast, their bf16 cast for the
# adapter's first matmul. Bytes per element of that input, fitted to
# benchmarks/plan_accuracy.py (LoRA at max_length 128 and 512, 2026-11-26);
# the structure-only count (the activation width in bytes) missed 15-23%.
DROPOUT_BYTES = {"autocast": 7.0, "plain": 5.0}
DROPOUT_COEF = {"q_proj": "h", "k_proj": "h", "v_proj": "h", "o_proj": "q", "gate_proj": "h", "up_proj": "h", "down_proj": "i"}
ADAPTER_METHODS = ("lora", "dora", "qlora")
FROZEN_BODY_METHODS = ("prompt_tuning", "prefix_tuning")  # trained state sits outside the decoder layers
# Bytes per activation value (units of ACT_COEF) with the base loaded in bf16 under autocast
# (models/precision.py, the default for adapter methods on bf16 hardware). Fitted to
# benchmarks/plan_accuracy.py (LoRA and prompt tuning at max_length 128 and 512, 2026-11-26,
# after the CPU attention and LM-head changes); a structure-only count (2 bytes, all bf16) missed
# 25-36%: the fp32 norm copies, the step's temporaries and allocator slack stay.
BF16_BASE_ACT_BYTES = {"adapter": 3.8, "frozen_body": 2.6}
# What lean LoRA layers keep (patches/fused.py), units of (hidden, kv width, intermediate): the two
# norm inputs, the input shared by q/k/v and the one shared by gate/up, q (with the attention
# output, both hidden wide), k and v, gate and up; no dropout masks (drawn again in backward).
LEAN_LORA_COEF = (6.0, 2.0, 2.0)
# Bytes per such value for a bf16 base (2 structurally; the step's temporaries and allocator slack
# on top). Fitted to benchmarks/plan_accuracy.py (LoRA at max_length 128 and 512, 2026-11-26).
LEAN_LORA_BF16_BYTES = 3.0
# Prompt/prefix tuning under lean layers (bf16 base; only the norms and SwiGLU are lean there):
# BF16_BASE_ACT_BYTES["frozen_body"] came out 26% high, refitted on the same benchmark's rows.
LEAN_FROZEN_BODY_BF16_BYTES = 1.9
# Layers' worth of activations resident at the peak of a checkpointed backward pass.
# Fitted to benchmarks/plan_accuracy.py with --gradient-checkpointing true (LoRA, max_length
# 128 and 512, 2026-11-26), where counting one recomputed layer came out 9% and 30% low;
# checked against the training benchmark's checkpointed run (other data) in docs/planning.md.
CHECKPOINT_LAYER_COPIES = 6.0
OPTIM_BYTES = {"adamw": 8, "adamw_8bit": 2, "paged_adamw_8bit": 2, "sgd": 0}


@dataclass
class Setup:
    method: str = "lora"
    dtype: str = "float32"
    micro_batch: int = 4
    seq_len: int = 512  # padded length of the longest micro-batch
    # Tokens in the widest micro-batch: micro_batch x seq_len when padded; with
    # padding-free batches (one flattened row) the sum of the longest rows.
    tokens: int = 0
    autocast: bool = False  # bf16 autocast over float32 weights (mixed_precision)
    optim: str = "adamw"
    gradient_checkpointing: bool = False
    checkpoint_layers: int = 0  # with checkpointing: how many layers recompute (0: all); the rest keep activations
    lean_layers: bool = False  # patches/fused.py; modelled for LoRA on a bf16 base, stock counts elsewhere
    lora_r: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["all-linear"])
    num_virtual_tokens: int = 20
    adapter_size: int = 64
    device_kind: str = "cpu"
    # Share of the batch's positions the LM head scores: the labelled ones
    # (score_labelled_only, patches/lm_head.py), or all of them (1.0).
    scored_share: float = 1.0
    vocab_tile: int = 32768  # LM-head tile width: TRL's 32,768, or strop's narrower one (patches/lm_head.py)
    nproc: int = 1  # processes the run is split over (strop train --nproc), per device figures
    strategy: str = "ddp"  # ddp, fsdp, deepspeed-zero2, deepspeed-zero3 (plan/sharding.py)


def adapted(shape: ModelShape, targets: list[str]) -> dict[str, tuple[int, int]]:
    lin = shape.linears()
    if targets == ["all-linear"]:
        return lin
    return {k: v for k, v in lin.items() if k in targets}


def trainable_params(shape: ModelShape, s: Setup) -> int:
    """Parameters the optimizer updates, per method (matches peft's counts for Llama-style models)."""
    L, h = shape.layers, shape.hidden
    if s.method == "full":
        return shape.total_params()
    if s.method in ADAPTER_METHODS:
        mods = adapted(shape, s.lora_targets).values()
        extra = sum(o for _, o in mods) if s.method == "dora" else 0  # DoRA's magnitude vector
        return L * (sum(s.lora_r * (i + o) for i, o in mods) + extra)
    if s.method == "prompt_tuning":
        return s.num_virtual_tokens * h
    if s.method == "prefix_tuning":
        return s.num_virtual_tokens * L * 2 * shape.kv_dim
    if s.method == "ia3":  # scales k, v outputs and the down projection's input
        return L * (2 * shape.kv_dim + shape.intermediate)
    if s.method == "adapter":  # bottleneck after attention and MLP
        return L * 2 * (2 * h * s.adapter_size + s.adapter_size + h)
    raise ValueError(f"no trainable-parameter rule for method {s.method!r}")


def weight_bytes(shape: ModelShape, s: Setup) -> float:
    if s.method == "qlora":
        # NF4: half a byte per weight plus one fp32 scale per 64 (double-quantised
        # to ~0.127 bits); embeddings, head and norms stay in the compute dtype.
        return shape.linear_params() * (0.5 + 0.127 / 8) + shape.other_params() * 2
    return shape.total_params() * DTYPE_BYTES[s.dtype]


def batch_tokens(s: Setup) -> int:
    virtual = s.micro_batch * s.num_virtual_tokens if s.method == "prompt_tuning" else 0
    return (s.tokens or s.micro_batch * s.seq_len) + virtual


def _bytes_per_value(s: Setup) -> float:
    """Bytes per activation value (units of ACT_COEF) for the stock modules."""
    if s.method == "qlora":
        return 2.0
    if s.dtype == "bfloat16":
        # bf16 base under autocast (dtype auto): the matmuls keep bf16 values, but the norms still
        # upcast to fp32 and the step's transients come on top; fitted, see BF16_BASE_ACT_BYTES.
        if s.method in FROZEN_BODY_METHODS:
            return LEAN_FROZEN_BODY_BF16_BYTES if s.lean_layers else BF16_BASE_ACT_BYTES["frozen_body"]
        return BF16_BASE_ACT_BYTES["adapter"]
    # Under autocast the matmul inputs and outputs are kept in bf16 while
    # the norms, rotary and residual stream stay in fp32: about half each.
    return 3.0 if s.autocast else 4.0


def _dropout_bytes(shape: ModelShape, s: Setup, b: float) -> float:
    """Bytes per token per layer that LoRA-style dropout keeps (peft's forward)."""
    if s.method not in ADAPTER_METHODS or s.lora_dropout <= 0:
        return 0.0
    width = {"h": shape.hidden, "q": shape.q_dim, "i": shape.intermediate}
    if s.method == "qlora":
        per_elem = b
    elif s.dtype == "bfloat16":
        per_elem = 3.0  # bf16 input: the dropped-out bf16 values and a one-byte mask, no extra cast
    else:
        per_elem = DROPOUT_BYTES["autocast" if s.autocast else "plain"]
    return per_elem * sum(width[DROPOUT_COEF[k]] for k in adapted(shape, s.lora_targets))


def activation_bytes(shape: ModelShape, s: Setup) -> float:
    tokens = batch_tokens(s)
    h, kv, i = shape.hidden, shape.kv_dim, shape.intermediate
    if s.lean_layers and s.method == "lora" and s.dtype == "bfloat16":
        # what patches/fused.py keeps; no dropout copies (its masks are drawn again in backward)
        b, coef, dropout = LEAN_LORA_BF16_BYTES, LEAN_LORA_COEF, 0.0
    else:
        b, coef = _bytes_per_value(s), ACT_COEF
        dropout = _dropout_bytes(shape, s, b)  # bytes per token per layer
    per_layer = coef[0] * h + coef[1] * kv + coef[2] * i
    if s.method in FROZEN_BODY_METHODS:
        # Nothing inside the layers trains, so the linear layers keep no input for
        # a weight gradient: the q/k/v, o, gate/up inputs (3 hidden) and down's (1 intermediate).
        per_layer -= 3 * h + i
    everything = tokens * shape.layers * (b * per_layer + dropout)
    if not s.gradient_checkpointing:
        return everything
    # Only each checkpointed layer's input is kept; one layer is recomputed at a time, and
    # while its backward runs, its activations, their gradients and the allocator's slack add
    # up to several layers' worth (CHECKPOINT_LAYER_COPIES). Layers past checkpoint_layers keep
    # everything. Never more than keeping everything (a model with few layers).
    checkpointed = min(s.checkpoint_layers or shape.layers, shape.layers)
    copies = min(CHECKPOINT_LAYER_COPIES, checkpointed)
    kept = tokens * (b * (checkpointed * h + copies * per_layer)
                     + (shape.layers - checkpointed) * (b * per_layer + dropout) + dropout)
    return min(kept, everything)


def lm_head_bytes(shape: ModelShape, s: Setup) -> float:
    tokens = batch_tokens(s)
    n = min(max(1, round(tokens * s.scored_share)), LM_HEAD_TILE[0])
    tile = n * min(shape.vocab, s.vocab_tile) * 4  # the tile math runs in fp32 (tile.float())
    grad_hidden = tokens * shape.hidden * 4
    return tile * LM_HEAD_TILES_LIVE[s.device_kind] + grad_hidden


def breakdown(shape: ModelShape, s: Setup) -> dict[str, float]:
    """Peak memory in MB by component; ``total`` is their sum."""
    if s.optim not in OPTIM_BYTES:
        raise ValueError(f"unknown optimizer {s.optim!r}")
    n_train = trainable_params(shape, s)
    # Full training updates the weights in their own dtype; adapters are kept in fp32.
    train_bytes = DTYPE_BYTES[s.dtype] if s.method == "full" else 4
    extra_weights = 0 if s.method == "full" else n_train * train_bytes
    state = OPTIM_BYTES[s.optim] * (1 if s.optim != "adamw" else train_bytes / 4)
    # Autocast caches a bf16 copy of every trainable fp32 leaf weight for the step.
    cast_cache = n_train * 2 if s.autocast and s.dtype == "float32" else 0
    parts = {
        "runtime": RUNTIME_MB[s.device_kind] * MB,
        "weights": weight_bytes(shape, s) + extra_weights + cast_cache,
        "gradients": n_train * train_bytes,
        "optimizer": n_train * state,
        "activations": activation_bytes(shape, s),
        "lm_head_loss": lm_head_bytes(shape, s),
    }
    parts, host = per_device(parts, s.strategy, s.nproc, shape.layers)
    out = {k: round(v / MB, 1) for k, v in parts.items()}
    out["total"] = round(sum(parts.values()) / MB, 1)
    out["trainable_params"] = n_train
    if host:
        out["host_offload"] = round(host / MB, 1)  # per process, in host RAM; not part of total
    return out
