"""ONE table: fine-tuning method name -> how to wrap a model for training.

Adding a method is one entry here, one example config under ``examples/``
and one row in the method test matrix (tests/test_methods.py). Entries are
imported lazily so this module stays torch-free (config validation imports it).
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
    save: Callable | None = None  # (model, directory) -> None; None: model.save_pretrained
    load_in_4bit: bool = False  # the base is loaded quantized (NF4) for training and reloading
    gradient_checkpointing: bool = True  # False where the method needs the KV cache while training


def _wrap_full(model, cfg):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def lora_config(model, cfg, **extra):
    from peft import LoraConfig

    targets = cfg.lora_target_modules
    target = "all-linear" if targets == ["all-linear"] else targets
    _check_targets(model, target, "lora_target_modules")
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=target, use_rslora=cfg.use_rslora, task_type="CAUSAL_LM", **extra)


def _wrap_lora(model, cfg):
    from peft import get_peft_model

    return get_peft_model(model, lora_config(model, cfg))


def _wrap_dora(model, cfg):
    from peft import get_peft_model

    return get_peft_model(model, lora_config(model, cfg, use_dora=True))


def _wrap_qlora(model, cfg):
    from peft import get_peft_model, prepare_model_for_kbit_training

    # Gradient checkpointing stays off: strop's runs are short and it would slow CPU training.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, lora_config(model, cfg))


def _wrap_prompt_tuning(model, cfg):
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    init = {}
    if cfg.prompt_tuning_init_text:
        # peft tokenizes the text itself; point it at the local directory the model was loaded from
        # (strop.models.load_model loads a resolved local path), never the hub.
        init = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": cfg.prompt_tuning_init_text,
                "tokenizer_name_or_path": model.name_or_path}
    from ..patches import prompt_cache

    peft_cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens, **init)
    return prompt_cache.install(get_peft_model(model, peft_cfg))


def _wrap_prefix_tuning(model, cfg):
    from peft import PrefixTuningConfig, get_peft_model

    from ..patches import prompt_cache

    return prompt_cache.install(get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM",
                                                                         num_virtual_tokens=cfg.num_virtual_tokens)))


def _wrap_ia3(model, cfg):
    from peft import IA3Config, get_peft_model

    extra = {}
    if cfg.ia3_target_modules:
        _check_targets(model, cfg.ia3_target_modules, "ia3_target_modules")
        # IA3 scales the *input* of feed-forward layers and the output of the others.
        ff = ("down_proj", "fc2", "c_proj", "w2", "dense_4h_to_h")
        extra = {"target_modules": cfg.ia3_target_modules,
                 "feedforward_modules": [t for t in cfg.ia3_target_modules if t in ff]}
    return get_peft_model(model, IA3Config(task_type="CAUSAL_LM", **extra))


def _wrap_adapter(model, cfg):
    from . import bottleneck

    return bottleneck.attach(model, cfg.adapter_reduction_factor, cfg.adapter_placement, cfg.adapter_non_linearity)


def _save_adapter(model, directory) -> None:
    from . import bottleneck

    bottleneck.save(model, directory)


def _check_targets(model, target, option: str) -> None:
    from ..core.errors import StropError

    if target == "all-linear":
        return
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in target if t not in names]
    if missing:
        raise StropError(
            f"option {option}: {', '.join(missing)} not found in the model "
            f"(linear layers here: {', '.join(sorted(_linear_names(model)))})"
        )


def _linear_names(model) -> set[str]:
    import torch

    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}


LORA_OPTIONS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "use_rslora")
ADAPTER_PLACEMENTS = ("houlsby", "pfeiffer")
ADAPTER_NON_LINEARITIES = ("relu", "gelu", "silu", "tanh")

METHODS: dict[str, Method] = {
    "full": Method("full", "every weight is trained", _wrap_full, True, False),
    "lora": Method("lora", "low-rank adapters on the linear layers (peft)", _wrap_lora, True, True, LORA_OPTIONS),
    "dora": Method("dora", "weight-decomposed LoRA: magnitude + low-rank direction (peft)", _wrap_dora, True, True,
                   LORA_OPTIONS),
    # Mergeable in principle, but only into a de-quantized base whose logits differ from the 4-bit one.
    "qlora": Method("qlora", "LoRA over a 4-bit NF4 base (peft + bitsandbytes)", _wrap_qlora, False, True,
                    LORA_OPTIONS, load_in_4bit=True),
    "prompt_tuning": Method("prompt_tuning", "learned soft prompt of N virtual tokens (peft)", _wrap_prompt_tuning,
                            False, True, ("num_virtual_tokens", "prompt_tuning_init_text")),
    "prefix_tuning": Method("prefix_tuning", "learned key/value prefixes in every layer (peft)", _wrap_prefix_tuning,
                            False, True, ("num_virtual_tokens",), gradient_checkpointing=False),
    "ia3": Method("ia3", "learned rescaling vectors on keys, values and feed-forward inputs (peft)", _wrap_ia3,
                  True, True, ("ia3_target_modules",)),
    "adapter": Method("adapter", "bottleneck adapters after attention and/or MLP (strop's own)", _wrap_adapter,
                      False, True, ("adapter_reduction_factor", "adapter_placement", "adapter_non_linearity"),
                      save=_save_adapter),
}


def get(name: str) -> Method:
    from ..core.errors import StropError
    from ..core.suggest import unknown

    if name not in METHODS:
        raise StropError(unknown("method", name, list(METHODS)))
    return METHODS[name]


def check_options(cfg) -> None:
    """Reject options set for a method they do not apply to, before any model is loaded."""
    from ..core.config import reject_others_options
    from ..core.errors import StropError

    get(cfg.method)
    reject_others_options(cfg, METHODS, cfg.method, "method")
    if getattr(cfg, "padding_free", False) and cfg.method in ("prompt_tuning", "prefix_tuning"):
        # padding_free is on by default; peft drops position_ids and prepends virtual
        # tokens once per row, so packed rows would train silently mis-positioned.
        cfg.padding_free = False
    if cfg.adapter_placement not in ADAPTER_PLACEMENTS:
        raise StropError(f"option adapter_placement: {cfg.adapter_placement!r} is not one of {', '.join(ADAPTER_PLACEMENTS)}")
    if cfg.adapter_non_linearity not in ADAPTER_NON_LINEARITIES:
        raise StropError(f"option adapter_non_linearity: {cfg.adapter_non_linearity!r} is not one of "
                         f"{', '.join(ADAPTER_NON_LINEARITIES)}")
