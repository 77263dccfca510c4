"""`strop plan`: memory, fit, time, cost and method advice for a config, without loading weights."""
from __future__ import annotations

import dataclasses
import math

from .. import models
from ..core.errors import StropError
from ..models.precision import weights_dtype
from ..patches.lm_head import VOCAB_TILE  # torch-free modules, like the planner
from . import advice, cost, hardware
from .memory import OPTIM_BYTES, Setup, breakdown
from .shape import read_shape

# Options of `strop plan` itself; every other --key is a training config key.
PLAN_OPTIONS = {"device": str, "json": str, "price_per_hour": float, "utilisation": float,
                "measure": bool, "measure_steps": int, "optim": str, "goal": str,
                "nproc": int, "distributed": str,  # processes per device figures (plan/sharding.py)
                "rows": int}  # without --data: how many rows to plan the time for (the worst case is planned)
WORST_CASE_ROWS = 1000


def split_options(overrides: dict) -> tuple[dict, dict]:
    """Separate plan options from config overrides (both still text)."""
    plan, train = {}, {}
    for key, value in overrides.items():
        if key in PLAN_OPTIONS:
            kind = PLAN_OPTIONS[key]
            try:
                plan[key] = str(value).lower() in ("1", "true", "yes") if kind is bool else kind(value)
            except ValueError:
                raise StropError(f"option --{key.replace('_', '-')}: cannot use {value!r}") from None
        else:
            train[key] = value
    check_numbers(plan)
    if plan.get("optim", "adamw") not in OPTIM_BYTES:
        raise StropError(f"option --optim: {plan['optim']!r} is not one of {', '.join(OPTIM_BYTES)}")
    from .sharding import check

    check(plan.get("distributed", "ddp"), plan.get("nproc", 1))
    return plan, train


def check_numbers(plan: dict) -> None:
    """One line for a --rows, --measure-steps, --price-per-hour or --utilisation the figures cannot use."""
    for key in ("rows", "measure_steps"):
        if key in plan and plan[key] < 1:
            raise StropError(f"option --{key.replace('_', '-')}: must be at least 1, got {plan[key]}")
    price = plan.get("price_per_hour", 0.0)
    if not (math.isfinite(price) and price >= 0):
        raise StropError(f"option --price-per-hour: must be a finite number >= 0, got {price}")
    util = plan.get("utilisation", 1.0)
    if not (math.isfinite(util) and 0 < util <= 1):
        raise StropError(f"option --utilisation: must be a fraction in (0, 1] (e.g. 0.4 for 40% of peak), got {util}")


def autocast_for(cfg, device_kind: str) -> bool:
    """The same choice strop train makes (models/precision.py), without importing torch for the CPU case."""
    mp = getattr(cfg, "mixed_precision", "no")
    if cfg.dtype == "bfloat16" or mp == "bf16":
        return True
    if mp != "auto":
        return False
    if device_kind == "cuda":
        return True  # every card in the table does bf16 except the T4, where autocast falls back
    return bool(hardware.cpu_flags() & {"avx512_bf16", "amx_bf16"})


def worst_batch_tokens(cfg, lengths: list[int]) -> int:
    """Tokens in the widest micro-batch the run can see."""
    longest = sorted(lengths, reverse=True)[: cfg.micro_batch_size]
    if getattr(cfg, "packing", False):
        return cfg.micro_batch_size * cfg.max_length
    if getattr(cfg, "padding_free", False):
        return sum(longest)  # one flattened row, no padding
    return len(longest) * longest[0]


def setup_for(cfg, seq_len: int, device_kind: str, optim: str = "adamw", tokens: int = 0,
              checkpointing: bool = False, checkpoint_layers: int = 0) -> Setup:
    # Keys other methods add to the config are read when present.
    autocast = autocast_for(cfg, device_kind)
    # strop narrows the LM-head tiles on CPU only (patches/lm_head.py)
    tile = VOCAB_TILE if getattr(cfg, "score_labelled_only", False) and device_kind == "cpu" else Setup.vocab_tile
    return Setup(method=cfg.method, dtype=weights_dtype(cfg, autocast), micro_batch=cfg.micro_batch_size, seq_len=seq_len,
                 vocab_tile=tile,
                 tokens=tokens, autocast=autocast,
                 optim=optim, gradient_checkpointing=checkpointing,
                 checkpoint_layers=checkpoint_layers,
                 # the lean layers patch SFT's forward only (train/preference.py:speedups)
                 lean_layers=bool(getattr(cfg, "lean_layers", False)) and getattr(cfg, "objective", "sft") == "sft",
                 lora_r=cfg.lora_r, lora_dropout=cfg.lora_dropout, lora_targets=list(cfg.lora_target_modules),
                 num_virtual_tokens=int(getattr(cfg, "num_virtual_tokens", 20)),
                 adapter_size=int(getattr(cfg, "adapter_size", 64)), device_kind=device_kind)


AUTO_CHECKPOINTING_SHARE = 0.6  # auto turns checkpointing on above this share of device memory


def checkpointing_choice(cfg, shape, device, method_allows: bool = True) -> tuple[bool, int, str]:
    """(on, layers, why): whether gradient checkpointing is on, how many decoder layers recompute
    (0: all of them) and why; `strop train` and `strop plan` both ask here.

    ``auto`` trades memory for speed only when it has to: it sizes the worst
    micro-batch (micro_batch_size x max_length tokens) without checkpointing
    and, when that estimate exceeds 60% of the device's memory (available RAM
    on a CPU, leaving room for everything else running), checkpoints the
    fewest layers that bring it under (all of them if nothing does).
    ``checkpoint_layers`` fixes the count instead.
    """
    if not method_allows:
        return False, 0, f"off: method {cfg.method} keeps trained state in the KV cache, which checkpointing drops"
    choice = str(getattr(cfg, "gradient_checkpointing", "auto")).lower()
    count = checkpoint_count(cfg)
    if shape is not None:
        check_checkpoint_layers(count, shape.layers)
    which = f" for the first {count} of {shape.layers if shape else '?'} layers (checkpoint_layers)" if count else ""
    if choice == "false":
        return False, 0, "off: set by gradient_checkpointing"
    if choice == "true":
        return True, count, f"on{which}: set by gradient_checkpointing"
    worst = cfg.micro_batch_size * cfg.max_length
    s = setup_for(cfg, cfg.max_length, device.kind, tokens=worst)  # every position labelled: the worst case
    need = breakdown(shape, s)["total"]
    budget = device.memory_gb * 1024 * AUTO_CHECKPOINTING_SHARE
    sized = f"about {need:,.0f} MB without it at the worst case ({worst:,} tokens per micro-batch)"
    where = f"60% of {device.memory_gb:.1f} GB on {device.name}"
    if need <= budget:
        return False, 0, f"off: {sized} fits in {where}"
    # the fewest checkpointed layers that fit; TRL's preference trainers re-enable every layer
    if not count and getattr(cfg, "objective", "sft") == "sft":
        for layers in range(1, shape.layers):
            total = breakdown(shape, dataclasses.replace(s, gradient_checkpointing=True, checkpoint_layers=layers))["total"]
            if total <= budget:
                return True, layers, f"on for the first {layers} of {shape.layers} layers: {sized} exceeds {where}; " \
                                     f"checkpointing {layers} brings it to about {total:,.0f} MB"
    return True, count, f"on{which}: {sized} exceeds {where}"


def checkpoint_count(cfg) -> int:
    """Layers ``checkpoint_layers`` names, 0 for all of them."""
    value = str(getattr(cfg, "checkpoint_layers", "all"))
    return 0 if value == "all" else int(value)


def check_checkpoint_layers(count: int, layers: int) -> None:
    if count > layers:
        raise StropError(f"option checkpoint_layers: {count} is more than the model's {layers} decoder layers")


def recomputed_share(s: Setup, shape) -> float:
    """Share of the decoder layers whose forward runs twice (0 without checkpointing)."""
    if not s.gradient_checkpointing:
        return 0.0
    return min(s.checkpoint_layers or shape.layers, shape.layers) / shape.layers


def make_plan(cfg, opts: dict | None = None) -> dict:
    opts = opts or {}
    device = hardware.get_device(opts.get("device"))
    model_dir = models.resolve(cfg.base_model)
    if isinstance(model_dir, str):
        raise StropError(f"model {cfg.base_model!r}: strop plan needs a local model directory to read config.json")
    from .tokens import count, worst_case

    shape = read_shape(model_dir)
    if cfg.data:
        if "rows" in opts:
            raise StropError("option --rows: only without --data (with a file, its rows are counted)")
        counted = count(cfg, models.load_tokenizer(cfg.base_model))
    else:  # "will it fit?" before there is data: every row at max_length, every token trained on
        if opts.get("measure"):
            raise StropError("option --measure: needs --data (it trains a few steps on the longest rows)")
        counted = worst_case(cfg, opts.get("rows", WORST_CASE_ROWS))
    seq_len = cfg.max_length if getattr(cfg, "packing", False) else counted.longest
    from ..methods import METHODS

    ckpt, ckpt_layers, ckpt_why = checkpointing_choice(cfg, shape, device, METHODS[cfg.method].gradient_checkpointing)
    nproc, strategy = opts.get("nproc", 1), opts.get("distributed", "ddp")
    widest = worst_batch_tokens(cfg, counted.lengths) + cost.preserve_batch_tokens(cfg, nproc, strategy)
    s = setup_for(cfg, seq_len, device.kind, opts.get("optim", "adamw"), widest, ckpt, ckpt_layers)
    if getattr(cfg, "score_labelled_only", False) and counted.tokens:
        s.scored_share = counted.trainable_tokens / counted.tokens
    # per device from here on; the weights' dtype as strop train chooses it under this strategy
    s = dataclasses.replace(s, nproc=nproc, strategy=strategy, dtype=weights_dtype(cfg, s.autocast, strategy))
    mem = breakdown(shape, s)
    budget = device.memory_gb * 1024
    measured = None
    if opts.get("measure"):
        from .measure import measure

        measured = measure(cfg, counted, opts.get("measure_steps", 3))
    rate = measured["tokens_per_s"] if measured else None
    return {
        "model": cfg.base_model, "method": cfg.method, "device": device.__dict__,
        "shape": shape.__dict__, "total_params": shape.total_params(),
        "data": {"worst_case": not cfg.data,
                 "rows": counted.rows, "tokens": counted.tokens, "trainable_tokens": counted.trainable_tokens,
                 "longest": counted.longest, "truncated": counted.truncated,
                 "padded_tokens_per_epoch": counted.padded_tokens_per_epoch},
        "memory_mb": mem, "seq_len": seq_len, "batch_tokens": s.tokens, "autocast": s.autocast,
        "gradient_checkpointing": {"on": ckpt, "layers": ckpt_layers or (shape.layers if ckpt else 0), "why": ckpt_why},
        "processes": {"nproc": nproc, "distributed": s.strategy},
        "fit": advice.fit(shape, s, budget),
        "time": cost.time_and_cost(shape, cfg, counted, device, utilisation=opts.get("utilisation"),
                                   tokens_per_s=rate, price_per_hour=opts.get("price_per_hour", 0.0),
                                   checkpointing=recomputed_share(s, shape), nproc=nproc, strategy=s.strategy,
                                   # a CPU run without bf16 autocast gets the float32 peak
                                   peak_tflops=hardware.cpu_peak_tflops(s.autocast) if device.kind == "cpu" else None),
        "advice": advice.method_advice(shape, s, counted.rows, counted.tokens, budget, opts.get("goal", "")),
        "measured": measured,
    }


def format_plan(p: dict) -> str:
    d, m, t, f = p["data"], p["memory_mb"], p["time"], p["fit"]
    lines = [f"model {p['model']}: {p['total_params'] / 1e6:.1f}M params; method {p['method']}: "
             f"{m['trainable_params']:,} trainable ({100 * m['trainable_params'] / p['total_params']:.2f}%)",
             (f"data: none given, so the worst case: {d['rows']:,} rows (--rows) of max_length {d['longest']} tokens, "
              f"every token trained on" if d.get("worst_case") else
              f"data: {d['rows']} rows, {d['tokens']:,} tokens after the chat template ({d['trainable_tokens']:,} trained "
              f"on), longest {d['longest']}, {d['truncated']} truncated"),
             f"device: {p['device']['name']} ({p['device']['memory_gb']:.1f} GB; {p['device']['source']})", "",
             f"peak memory estimate (widest micro-batch: {p['batch_tokens']} tokens, longest row {p['seq_len']}):"]
    procs = p.get("processes", {"nproc": 1})
    if procs["nproc"] > 1 or procs.get("distributed", "ddp") != "ddp":
        lines[-1] = lines[-1][:-2] + f"; per device of {procs['nproc']} processes, {procs['distributed']}):"
    for key in ("runtime", "weights", "gradients", "optimizer", "activations", "lm_head_loss"):
        lines.append(f"  {key:<14} {m[key]:>10,.0f} MB")
    if m.get("host_offload"):
        lines.append(f"  {'(host RAM)':<14} {m['host_offload']:>10,.0f} MB per process, offloaded; not in the total")
    lines.append(f"  gradient checkpointing {p['gradient_checkpointing']['why']}")
    lines.append(f"  {'total':<14} {m['total']:>10,.0f} MB   budget {f['budget_mb']:,} MB: {'fits' if f['fits'] else 'does NOT fit'}")
    if p["measured"]:
        ms = p["measured"]
        lines.append(f"  measured       {ms['peak_rss_mb']:>10,.0f} MB peak RSS over {ms['steps']} real steps on the "
                     f"{ms['rows']} longest rows ({ms['tokens_per_s']} tokens/s)")
    for fix in f["fixes"]:
        lines.append(f"  fix: {fix['setting']:<28} -> {fix['total_mb']:>8,.0f} MB  ({fix['change']})")
    if f["fixes"] and not f.get("fixed"):
        lines.append("  no listed change fits this budget: a larger device is needed")
    lines += ["", f"time: {t['steps']} steps ({t['epochs']} epochs), {t['flops_per_token'] / 1e9:.2f} GFLOP/token, "
                  f"{t['tokens_per_s']:,} tokens/s ({t['rate_source']})",
              f"  {_dur(t['epoch_s'])} per epoch, {_dur(t['total_s'])} total"
              + (f" (with about {t['preserve_tokens_per_epoch']:,} tokens per epoch of forgetting protection, "
                 f"preserve {t['preserve']})" if t.get("preserve_tokens_per_epoch") else "")
              + (f", cost {t['cost']:.2f} at {t['price_per_hour']}/hour" if t["price_per_hour"] else ""), "", "advice:"]
    lines += [f"  - {a}" for a in p["advice"]]
    return "\n".join(lines)


def _dur(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"
