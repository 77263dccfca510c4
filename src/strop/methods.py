"""ONE table: fine-tuning method name -> how to wrap a model for training.

Adding a method is one entry here, one example config under ``examples/``
and one row in the method test matrix. Entries are imported lazily so this
module stays torch-free (config validation imports it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    wrap: Callable  # (model, cfg) -> trainable model
    mergeable: bool  # can the trained weights be folded into the base?
    saves_adapter: bool  # True: final/ holds an adapter, not full weights
    options: tuple[str, ...] = ()  # config keys that only make sense for this method


def _wrap_full(model, cfg):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _wrap_lora(model, cfg):
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_target_modules
    target = "all-linear" if targets == ["all-linear"] else targets
    _check_targets(model, target)
    peft_cfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=target,
        use_rslora=cfg.use_rslora,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def _check_targets(model, target) -> None:
    from .errors import StropError

    if target == "all-linear":
        return
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in target if t not in names]
    if missing:
        raise StropError(
            f"option lora_target_modules: {', '.join(missing)} not found in the model "
            f"(linear layers here: {', '.join(sorted(_linear_names(model)))})"
        )


def _linear_names(model) -> set[str]:
    import torch

    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}


LORA_OPTIONS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "use_rslora")

METHODS: dict[str, Method] = {
    "lora": Method("lora", "low-rank adapters on the linear layers (peft)", _wrap_lora, True, True, LORA_OPTIONS),
    "full": Method("full", "every weight is trained", _wrap_full, True, False),
}


def get(name: str) -> Method:
    from .config import _unknown
    from .errors import StropError

    if name not in METHODS:
        raise StropError(_unknown("method", name, list(METHODS)))
    return METHODS[name]
