"""Typed run configuration: YAML file + command-line overrides, validated once.

Key names follow what people know from Axolotl and TRL (``lora_r``,
``learning_rate``, ``num_epochs`` ...). This module must not import torch:
``strop --help`` and config errors have to be instant.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from .errors import StropError
from .suggest import did_you_mean, unknown

DEFAULT_MODEL = "smollm2-135m-instruct"
REPORT_TO = ("tensorboard", "mlflow", "wandb", "none")
PRESERVE = ("auto", "kl", "replay", "none")  # forgetting protection (train/preserve.py)
PRESERVE_SELECT = ("random", "nearest")  # which of its general prompts (train/preserve.py)
# what keep_best and early stopping compare: the validation loss, or a task metric of greedy answers to
# held-out prompts (train/gen_metrics.py; names as metrics.py's bleu, rouge and exact_match return them)
BEST_METRICS = ("loss", "rougeL", "rouge1", "rouge2", "bleu", "exact_match")
ADAPTER_METHODS = ("lora", "dora", "qlora", "ia3")  # peft adapters that turn off, leaving the base to compare with
# preserve kl works with every method (train/preserve_kl.py): the peft methods compare with the model with its
# adapter off (prompt and prefix tuning: their own forward, virtual tokens in front, against the decoder
# alone); full fine-tuning and bottleneck adapters with a snapshot of the model taken before the first step


def _positive(cfg, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise StropError(f"option {name}: must be at least 1, got {getattr(cfg, name)}")


def _at_least(cfg, minimum, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < minimum:
            raise StropError(f"option {name}: must be >= {minimum}, got {getattr(cfg, name)}")


def _one_of(cfg, name: str, allowed) -> None:
    if getattr(cfg, name) not in allowed:
        raise StropError(f"option {name}: {getattr(cfg, name)!r} is not one of {', '.join(allowed)}")


# The run configuration, one group per concern. YAML keys and --options are the flat field
# names; a group is a way to read and check the fields, not a level of nesting.
@dataclass
class ModelOptions:
    base_model: str = DEFAULT_MODEL
    # precision the base weights are loaded in: auto = bf16 for a frozen base under bf16 autocast
    # (adapters and master weights stay float32, models/precision.py), float32 otherwise
    dtype: str = "auto"
    # loading safety (docs/reliability.md): pickles and a model's own code are refused unless asked for
    allow_pickle: bool = False  # load .bin/.pt/.pth files (with weights_only=True)
    trust_remote_code: bool = False  # run the model's own Python code; needs model_revision
    model_revision: str = ""  # hub commit hash, or the code hash strop prints for a local directory

    def check_model(self) -> None:
        if self.trust_remote_code and not self.model_revision:
            raise StropError("option trust_remote_code: needs model_revision pinned (a hub commit hash, or for a "
                             "local directory the code hash strop reports), so the code that runs cannot change")
        _one_of(self, "dtype", ("auto", "float32", "bfloat16"))


@dataclass
class DataOptions:
    data: str = ""
    eval_data: str = ""
    max_length: int = 512
    val_size: float = 0.1  # fraction (<1) or count (>=1) held out when eval_data is empty
    train_on_inputs: bool = False  # True: loss on every token, not just assistant turns
    system_prompt: str = ""  # prepended to conversations that have no system turn
    # a chat template's thinking switch (Qwen3's enable_thinking): auto = the template's own default;
    # true/false = passed to the template in training, and kept by generation, serving and export
    enable_thinking: str = "auto"

    def check_data(self) -> None:
        _positive(self, "max_length")
        self.enable_thinking = str(self.enable_thinking).lower()
        _one_of(self, "enable_thinking", ("auto", "true", "false"))
        if self.val_size < 0:
            raise StropError(f"option val_size: must be >= 0, got {self.val_size}")
        if self.val_size >= 1 and not float(self.val_size).is_integer():
            raise StropError(f"option val_size: {self.val_size} is neither a fraction below 1 nor a whole number "
                             "of rows (1 or more)")


@dataclass
class MethodOptions:
    method: str = "lora"
    init_adapter: str = ""  # an adapter directory to train on from (same method), not a new adapter
    # LoRA family
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    use_rslora: bool = False
    # prompt and prefix tuning
    num_virtual_tokens: int = 20
    prompt_tuning_init_text: str = ""  # empty: random soft prompt
    # IA3
    ia3_target_modules: list[str] = field(default_factory=list)  # empty: peft's default for the architecture
    # bottleneck adapters
    adapter_reduction_factor: int = 16  # bottleneck width = hidden size / this
    adapter_placement: str = "houlsby"  # houlsby: after attention and MLP; pfeiffer: after MLP only
    adapter_non_linearity: str = "relu"

    def check_method(self) -> None:
        """The values; which options apply to which method is the method table's (strop.methods.check_options)."""
        _positive(self, "lora_r", "lora_alpha", "num_virtual_tokens", "adapter_reduction_factor")
        if not 0 <= self.lora_dropout < 1:
            raise StropError(f"option lora_dropout: {self.lora_dropout} is outside [0, 1)")


@dataclass
class ObjectiveOptions:
    # preference and reinforcement objectives (train/preference.py, docs/preference.md); the
    # objective table (methods/objectives.py) says which of these each objective reads
    objective: str = "sft"  # sft, dpo, orpo, kto, simpo, cpo, reward, grpo
    beta: float = 0.1  # strength of the pull towards the reference (dpo, kto, grpo KL) or ORPO/CPO weight
    dpo_loss_type: str = "sigmoid"  # sigmoid, ipo, robust (dpo only)
    label_smoothing: float = 0.0  # assumed label-flip rate for dpo_loss_type robust, in [0, 0.5)
    simpo_gamma: float = 0.5  # target reward margin (simpo only)
    reward_funcs: list[str] = field(default_factory=list)  # grpo: module:function, see strop.train.rewards
    reward_model: str = ""  # grpo: a run directory trained with objective reward
    grader: str = ""  # grpo: an OpenAI grader object, as JSON text or a .json file (strop.graders)
    num_generations: int = 4  # grpo: completions sampled per prompt
    max_completion_length: int = 64  # grpo: tokens per sampled completion
    temperature: float = 1.0  # grpo: sampling temperature

    def check_objective(self) -> None:
        """Nothing on its own: the objective table checks these against each other (strop.methods.objectives)."""


@dataclass
class PreserveOptions:
    # forgetting-aware training (train/preserve.py, docs/quality.md): replay = mix the base model's own
    # (sampled) answers to general prompts into training; none = the task data only
    # kl = keep the model's next-token distribution on those answers near the base's (the model with its
    # adapter off, or for full fine-tuning and bottleneck adapters a snapshot taken before the first step)
    # auto (default) = kl for chat SFT in one process or under DDP, except prompt/prefix tuning (kl when asked);
    # none otherwise (FSDP/DeepSpeed among them: methods/preserve.KL_STRATEGIES)
    preserve: str = "auto"
    # general rows per training row; 0 = the mode's default (replay 0.5, kl 0.125: docs/quality.md)
    preserve_ratio: float = 0.0
    preserve_weight: float = 2.0  # kl: weight of the mean per-token KL(base || model) next to the task loss
    # which general prompts: random = a seeded sample; nearest = those closest to the task's own prompts
    # (where a narrow file's answers leak first; docs/quality.md has both measured)
    preserve_select: str = "random"
    # kl on padding-free runs: the general rows join the task's packed micro-batch row (one forward and
    # backward; 1.24x the unprotected training on the demo instead of 1.46x); the same gradients, rounded
    # differently in bf16. Off by default: the defaults were measured without it (docs/quality.md).
    preserve_pack: bool = False
    # kl: the share of the optimizer steps over which the term's weight rises linearly from 0 to
    # preserve_weight (0 = full weight from the first step; docs/quality.md has it measured)
    preserve_warmup: float = 0.0

    def check_preserve(self) -> None:
        if self.preserve not in PRESERVE:
            raise StropError(unknown("preserve", self.preserve, list(PRESERVE)))
        if self.preserve_select not in PRESERVE_SELECT:
            raise StropError(unknown("preserve_select", self.preserve_select, list(PRESERVE_SELECT)))
        if not 0 < self.preserve_weight <= 100:
            raise StropError(f"option preserve_weight: {self.preserve_weight} is outside (0, 100]")
        if not 0 <= self.preserve_warmup < 1:
            raise StropError(f"option preserve_warmup: {self.preserve_warmup} is outside [0, 1)")
        if self.preserve_warmup and self.preserve in ("replay", "none"):
            raise StropError(f"option preserve_warmup: applies to preserve kl (or auto), not {self.preserve}")
        if not 0 <= self.preserve_ratio <= 4:
            raise StropError(f"option preserve_ratio: {self.preserve_ratio} is outside [0, 4] (0: the mode's default)")


@dataclass
class OptimisationOptions:
    num_epochs: float = 3.0
    max_steps: int = -1
    learning_rate: float = 2e-4
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # NEFTune (sft): uniform noise on the input embeddings while training, alpha / sqrt(example length x width)
    # per example (train/neftune.py); 5 is the paper's usual value; 0: off
    neftune_noise_alpha: float = 0.0
    micro_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    seed: int = 42
    nan_policy: str = "abort"  # abort: stop without saving; skip: drop that update and go on
    nan_max_consecutive_skips: int = 3
    loss_spike_factor: float = 3.0  # log a step whose loss exceeds this x the running median, with its sample ids; 0: off

    def check_optimisation(self) -> None:
        _positive(self, "micro_batch_size", "gradient_accumulation_steps")
        if not 0 < self.learning_rate < 1:
            raise StropError(f"option learning_rate: {self.learning_rate} is outside (0, 1)")
        if self.num_epochs < 0:
            raise StropError(f"option num_epochs: must be >= 0, got {self.num_epochs}")
        if self.num_epochs <= 0 and self.max_steps <= 0:
            raise StropError("option num_epochs: must be positive unless max_steps is set")
        if not 0 <= self.warmup_ratio <= 1:
            raise StropError(f"option warmup_ratio: {self.warmup_ratio} is outside [0, 1]")
        _at_least(self, 0, "weight_decay", "max_grad_norm", "nan_max_consecutive_skips")
        if not 0 <= self.seed < 2 ** 32:
            raise StropError(f"option seed: {self.seed} is outside 0 to {2 ** 32 - 1}")
        _one_of(self, "nan_policy", ("abort", "skip"))
        if not 0 <= self.neftune_noise_alpha <= 100:
            raise StropError(f"option neftune_noise_alpha: {self.neftune_noise_alpha} is outside [0, 100] (0: off)")
        if self.loss_spike_factor < 0:
            raise StropError(f"option loss_spike_factor: must be >= 0 (0 turns it off), got {self.loss_spike_factor}")


@dataclass
class SpeedOptions:
    # Speed levers (see docs/performance.md); all switchable off for debugging.
    mixed_precision: str = "auto"  # auto: bf16 autocast where the CPU/GPU does bf16 natively; bf16; no
    padding_free: bool = True  # flatten each micro-batch into one row, no pad tokens
    # auto: off (faster) when the planner's estimate without it fits in 60% of the
    # device's memory, on otherwise; true/false force it (docs/performance.md)
    gradient_checkpointing: str = "auto"
    # with checkpointing on: how many decoder layers recompute (the first N); the others keep their
    # activations, trading memory back for speed. "all" or a count.
    checkpoint_layers: str = "all"
    score_labelled_only: bool = True  # the LM head scores only positions with a label (patches/lm_head.py)
    per_example_attention: bool = True  # padding-free rows: attention per example, not one masked square (patches/varlen.py)
    lean_layers: bool = True  # LoRA linears, SwiGLU and RMSNorm keep fewer tensors for backward (patches/fused.py)

    def check_speed(self) -> None:
        _one_of(self, "mixed_precision", ("auto", "bf16", "no"))
        self.gradient_checkpointing = str(self.gradient_checkpointing).lower()
        _one_of(self, "gradient_checkpointing", ("auto", "true", "false"))
        self.checkpoint_layers = str(self.checkpoint_layers).lower()
        if self.checkpoint_layers != "all" and not (self.checkpoint_layers.isdigit() and int(self.checkpoint_layers) > 0):
            raise StropError(f"option checkpoint_layers: {self.checkpoint_layers!r} is not 'all' or a positive number of layers")


@dataclass
class EvaluationOptions:
    eval_steps: int = 0  # 0: once per epoch
    early_stopping_patience: int = 3  # evaluations without improvement; 0 disables
    keep_best: bool = True  # final/ = the checkpoint with the best best_metric; false: the last step
    # loss: the lowest eval loss; rougeL, bleu, exact_match ...: the highest score of the greedy answers to
    # eval_generate_samples held-out prompts (the first of equal scores, as transformers keeps it)
    best_metric: str = "loss"
    eval_generate_samples: int = 0  # held-out prompts answered greedily for BLEU/ROUGE/exact match; 0: off
    eval_generate_every: int = 0  # 0: at each evaluation; N: every N steps (train/gen_metrics.py)

    def check_evaluation(self) -> None:
        for key in ("eval_steps", "early_stopping_patience", "eval_generate_samples", "eval_generate_every"):
            if getattr(self, key) < 0:
                raise StropError(f"option {key}: must be >= 0, got {getattr(self, key)}")
        if self.eval_generate_every and not self.eval_generate_samples:
            raise StropError("option eval_generate_every: set eval_generate_samples too (how many held-out prompts)")
        if self.best_metric not in BEST_METRICS:
            raise StropError(unknown("best_metric", self.best_metric, list(BEST_METRICS)))
        if self.best_metric != "loss" and not self.eval_generate_samples:
            raise StropError(f"option best_metric: {self.best_metric} is scored on greedy answers; set "
                             "eval_generate_samples too (how many held-out prompts to answer at each evaluation)")
        if self.best_metric != "loss" and self.eval_generate_every:
            raise StropError(f"option best_metric: {self.best_metric} needs the answers at each evaluation; "
                             "leave eval_generate_every at 0")


@dataclass
class RunOptions:
    output_dir: str = "runs/latest"
    save_steps: int = 0  # 0: together with evaluation
    save_total_limit: int = 2  # at least 2, so the last good checkpoint survives a save cut short
    logging_steps: int = 1
    report_to: str = "tensorboard"
    resume: bool = False
    # licenses (strop license): commercial stops on a known conflict unless the risk is accepted
    intended_use: str = ""  # "", commercial, research
    accept_license_risk: bool = False

    def check_run(self) -> None:
        if self.report_to not in REPORT_TO:
            raise StropError(unknown("report_to", self.report_to, list(REPORT_TO)))
        if self.save_total_limit < 2:
            raise StropError(f"option save_total_limit: must be at least 2 (got {self.save_total_limit}) so a good checkpoint always survives")
        _positive(self, "logging_steps")
        _at_least(self, 0, "save_steps")
        if self.intended_use not in ("", "commercial", "research"):
            raise StropError(f"option intended_use: {self.intended_use!r} is not one of commercial, research")


GROUPS = (ModelOptions, DataOptions, MethodOptions, ObjectiveOptions, PreserveOptions, OptimisationOptions,
          SpeedOptions, EvaluationOptions, RunOptions)  # in the order `strop train --help` lists them


@dataclass
class TrainConfig(RunOptions, EvaluationOptions, SpeedOptions, OptimisationOptions, PreserveOptions,
                  ObjectiveOptions, MethodOptions, DataOptions, ModelOptions):  # fields come out in GROUPS order
    def validate(self) -> "TrainConfig":
        """Check each group's fields, then what ties groups together. What the method and objective tables
        allow is checked on top of this by strop.methods.options.check, which every training entry point calls."""
        for group in GROUPS:
            getattr(self, "check_" + group.__name__.removesuffix("Options").lower())()
        if self.preserve in ("kl", "replay") and self.objective != "sft":
            raise StropError(f"option preserve: {self.preserve} applies to objective sft, not {self.objective}")
        if self.neftune_noise_alpha and self.objective != "sft":
            raise StropError(f"option neftune_noise_alpha: applies to objective sft, not {self.objective}")
        if self.eval_generate_samples and self.objective != "sft":
            raise StropError(f"option eval_generate_samples: only used with --objective sft, not {self.objective} "
                             "(preference runs: strop eval RUN --judge URL)")
        if self.eval_generate_samples and not self.eval_data and self.val_size == 0:
            raise StropError("option eval_generate_samples: needs held-out rows (eval_data, or val_size > 0)")
        return self


def reject_others_options(cfg: TrainConfig, table: dict, chosen: str, flag: str) -> None:
    """One line for an option that only other entries of ``table`` (the methods, the objectives) read.

    Each entry lists its own ``options``. An option counts as set when it differs from its default
    (a config cannot tell an explicit default from an omitted key).
    """
    default = TrainConfig()
    for other in table.values():
        for key in other.options:
            if key in table[chosen].options or getattr(cfg, key) == getattr(default, key):
                continue
            users = ", ".join(e.name for e in table.values() if key in e.options)
            raise StropError(f"option {key} does not apply to --{flag} {chosen} (it is for: {users})")


def field_names(cls=TrainConfig) -> list[str]:
    return [f.name for f in fields(cls)]


def _coerce(cls, name: str, value: Any) -> Any:
    """Turn a YAML or command-line value into the field's declared type."""
    hint = get_type_hints(cls)[name]
    try:
        if get_origin(hint) is list:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list):
                raise ValueError("expected a list")
            (inner,) = get_args(hint)
            return [inner(v) for v in value]
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("expected a whole number")
        if hint is int:
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if hint is float:
            number = float(value)
            if not math.isfinite(number):
                raise ValueError("not a finite number")
            return number
        if hint is str:
            if isinstance(value, (dict, list)):
                raise ValueError("expected text")
            return str(value)
    except OverflowError:
        raise StropError(f"option {name}: cannot use {value!r} (not a finite number)") from None
    except (TypeError, ValueError) as exc:
        raise StropError(f"option {name}: cannot use {value!r} ({exc})") from None
    return value


def build(cls=TrainConfig, values: dict[str, Any] | None = None, *, origin: str = "option"):
    """Build a config from a mapping, rejecting unknown keys with suggestions."""
    values = dict(values or {})
    valid = field_names(cls)
    kwargs = {}
    for key, value in values.items():
        norm = key.replace("-", "_")
        if norm not in valid:
            raise StropError(f"{origin}: unknown key {key!r}{did_you_mean(norm, valid, cutoff=0.6)}")
        kwargs[norm] = _coerce(cls, norm, value)
    return cls(**kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if p.is_dir():
        raise StropError(f"{p}: is a directory, not a config file (YAML)")
    if not p.is_file():
        raise StropError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise StropError(f"{p}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise StropError(f"{p}: a config file must be a mapping of key: value")
    return data


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``--key value`` / ``--flag`` / ``--key=value`` pairs -> dict (values still text)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise StropError(f"unexpected argument {arg!r}; options look like --key value")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 1
        else:
            value = "true"  # a bare flag
        out[key.replace("-", "_")] = value
        i += 1
    return out


def read_train_config(path: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """A YAML file (or none) with command-line overrides on top, typed but not yet checked
    (strop.methods.options.load_train_config checks it)."""
    values: dict[str, Any] = {}
    if path and Path(path).is_dir():
        raise StropError(f"{path}: is a directory, not a config file; give a YAML config (CONFIG.yaml) first, "
                         f"or the training data as --data FILE (a folder of data files works too: --data {path})")
    if path:
        values.update(load_yaml(path))
        origin = str(path)
    else:
        origin = "option"
    # Keys from the file are checked against the file's name; CLI keys as options.
    cfg = build(TrainConfig, values, origin=origin)
    if overrides:
        merged = dataclasses.asdict(cfg)
        merged.update({k: v for k, v in build_partial(overrides).items()})
        cfg = TrainConfig(**merged)
    return cfg


def build_partial(overrides: dict[str, Any]) -> dict[str, Any]:
    valid = field_names()
    out = {}
    for key, value in overrides.items():
        if key not in valid:
            hint = did_you_mean(key.replace("_", "-"), [v.replace("_", "-") for v in valid], cutoff=0.6, prefix="--")
            raise StropError(f"unknown option --{key.replace('_', '-')}{hint}")
        out[key] = _coerce(TrainConfig, key, value)
    return out


def to_yaml(cfg) -> str:
    import yaml

    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
