"""Forgetting protection (``--preserve``): which mode a run gets and how many general rows it mixes in.

Torch-free, so the planner can price a run's preservation before anything loads; the modes
themselves (replay rows, the KL term) are built in strop.train.preserve and strop.train.preserve_kl.
"""
from __future__ import annotations

# general rows per training row when preserve_ratio is 0 (docs/quality.md: on the demo, kl at 0.125 kept
# general-text perplexity below the base's at 1.4x the training time; replay's figure is from its own table)
DEFAULT_RATIO = {"replay": 0.5, "kl": 0.125}


# kl works with these (train/preserve_kl.py), but the default leaves it off: one soft prompt in front of every
# input cannot both keep the general answers and change the persona's (docs/quality.md, "Prompt and prefix tuning")
SOFT_PROMPT_METHODS = ("prompt_tuning", "prefix_tuning")


# kl's rows take their own forward through the unwrapped model beside the task's (train/preserve_kl.py): with
# the weights whole in every process (one process, DDP). Under FSDP or ZeRO-3 a direct call would meet sharded
# weights; ZeRO-2 is untested (no GPU here), so it is refused too rather than guessed at.
KL_STRATEGIES = ("none", "ddp")


def check_strategy(cfg, strategy: str) -> None:
    """Refuse ``--preserve kl`` under a strategy it cannot run in (launch.start names it ``deepspeed``, each rank
    ``deepspeed-zero2/3``: neither is in KL_STRATEGIES)."""
    from ..core.errors import StropError

    if cfg.preserve == "kl" and strategy not in KL_STRATEGIES:
        raise StropError(f"option preserve: kl runs in one process or under --distributed ddp, not {strategy}; "
                         "use --preserve replay")


def mode_for(cfg, strategy: str = "none", data_format: str = "messages") -> tuple[str, str]:
    """(mode, why) for this run: ``auto`` (the default) is kl where it applies, none elsewhere.

    ``strategy``: how the run is split over processes (train/distributed.strategy: none, ddp, fsdp,
    deepspeed-zero2/3). TrainConfig.validate has refused unknown values and replay or kl outside SFT.
    """
    if cfg.preserve != "auto":
        return cfg.preserve, "chosen"
    if cfg.objective != "sft":
        return "none", f"auto: objective {cfg.objective} keeps its own pull towards the reference"
    if cfg.method in SOFT_PROMPT_METHODS:
        return "none", (f"auto: with kl the {cfg.method} run measured learned no persona (docs/quality.md); "
                        "--preserve kl to choose it")
    if strategy not in KL_STRATEGIES:
        return "none", f"auto: kl runs in one process or under ddp, not {strategy} (--preserve replay works there)"
    if data_format == "text":
        return "none", "auto: plain text is meant to move the whole distribution (--preserve kl to keep chat answers)"
    return "kl", "auto"


def ratio_for(cfg, mode: str) -> float:
    return cfg.preserve_ratio or DEFAULT_RATIO[mode]
