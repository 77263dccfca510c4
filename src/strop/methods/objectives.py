"""ONE table: training objective -> the data it needs and the options it reads.

Torch-free, so config validation can use it. The trainers themselves live in
``preference.py``; SFT stays in ``sft.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import StropError


@dataclass(frozen=True)
class Objective:
    name: str
    summary: str
    data_kinds: tuple[str, ...]  # what strop.data.load may return (see data/records.KINDS)
    options: tuple[str, ...] = ()  # config keys only this objective reads


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("sft", "imitate the assistant turns (train/sft.py)", ("sft", "text")),
    Objective("dpo", "direct preference optimisation against a frozen reference", ("preference",),
              ("beta", "dpo_loss_type", "label_smoothing")),
    Objective("orpo", "SFT plus an odds-ratio preference penalty, no reference model", ("preference",), ("beta",)),
    Objective("kto", "unpaired desirable/undesirable labels against a reference", ("unpaired",), ("beta",)),
    Objective("simpo", "length-normalised preference margin, no reference model", ("preference",),
              ("beta", "simpo_gamma")),
    Objective("cpo", "contrastive preference optimisation (DPO-like loss + SFT, no reference)", ("preference",),
              ("beta",)),
    Objective("reward", "a reward model (sequence-classification head) on preference pairs", ("preference",)),
    Objective("grpo", "online RL: sample completions, score them, reinforce the better ones",
              ("sft", "preference", "prompt"),
              ("beta", "reward_funcs", "reward_model", "grader", "num_generations", "max_completion_length",
               "temperature")),
)}

DPO_LOSS_TYPES = ("sigmoid", "ipo", "robust")
# Methods whose wrapped model TRL's preference trainers accept; with an adapter the
# reference is the same model with the adapter switched off.
PREFERENCE_METHODS = ("lora", "dora", "qlora", "full")


def get(name: str) -> Objective:
    if name not in OBJECTIVES:
        from ..core.suggest import unknown

        raise StropError(unknown("objective", name, list(OBJECTIVES)))
    return OBJECTIVES[name]


def check_objective(cfg) -> None:
    """Reject an unknown objective, a method it cannot use, and options meant for another objective."""
    from ..core.config import reject_others_options

    obj = get(cfg.objective)
    reject_others_options(cfg, OBJECTIVES, obj.name, "objective")
    if obj.name == "sft":
        return
    if cfg.method not in PREFERENCE_METHODS:
        raise StropError(f"option method: --objective {obj.name} works with {', '.join(PREFERENCE_METHODS)}, "
                         f"not {cfg.method}")
    if obj.name == "reward" and cfg.method not in ("lora", "full"):
        raise StropError(f"option method: --objective reward works with lora or full, not {cfg.method}")
    _check_values(cfg)


def _check_values(cfg) -> None:
    if cfg.dpo_loss_type not in DPO_LOSS_TYPES:
        raise StropError(f"option dpo_loss_type: {cfg.dpo_loss_type!r} is not one of {', '.join(DPO_LOSS_TYPES)}")
    if cfg.label_smoothing and cfg.dpo_loss_type != "robust":
        raise StropError("option label_smoothing: only used with --dpo-loss-type robust")
    if not 0 <= cfg.label_smoothing < 0.5:
        raise StropError(f"option label_smoothing: {cfg.label_smoothing} is outside [0, 0.5)")
    if cfg.beta < 0:
        raise StropError(f"option beta: must be >= 0, got {cfg.beta}")
    if cfg.objective != "grpo":
        return
    if not cfg.reward_funcs and not cfg.reward_model and not cfg.grader:
        raise StropError("objective grpo: name at least one reward, e.g. --reward-funcs strop.train.rewards:length_window, "
                         "--reward-model runs/my-reward or --grader grader.json")
    for spec in cfg.reward_funcs:
        if spec.count(":") != 1 or not all(spec.split(":")):
            raise StropError(f"option reward_funcs: {spec!r} is not module:function")
    if cfg.num_generations < 2:
        raise StropError(f"option num_generations: GRPO compares completions of one prompt, needs at least 2, "
                         f"got {cfg.num_generations}")
    if (cfg.micro_batch_size * cfg.gradient_accumulation_steps) % cfg.num_generations:
        raise StropError(f"option micro_batch_size: micro_batch_size x gradient_accumulation_steps "
                         f"({cfg.micro_batch_size * cfg.gradient_accumulation_steps}) must be a multiple of "
                         f"num_generations ({cfg.num_generations})")
    if cfg.max_completion_length < 1 or cfg.temperature <= 0:
        raise StropError("option max_completion_length/temperature: must be positive")
