"""What every objective sets up the same way: the trainable model, gradient checkpointing, and the
TrainingArguments all of TRL's trainers share."""
from __future__ import annotations

import json
from pathlib import Path

from .. import methods, models
from ..core.config import TrainConfig
from ..core.errors import StropError
from ..core.rundir import RunDir
from ..models.precision import float32_trainables, use_bf16, weights_dtype
from . import distributed


def schedule(cfg: TrainConfig, has_eval: bool) -> dict:
    """Evaluation, checkpoint and early-stopping cadence for TrainingArguments."""
    if not has_eval:
        if cfg.save_steps:
            return {"eval_strategy": "no", "save_strategy": "steps", "save_steps": cfg.save_steps}
        return {"eval_strategy": "no", "save_strategy": "epoch"}
    if cfg.eval_steps:
        save = cfg.save_steps or cfg.eval_steps
        if save % cfg.eval_steps:
            raise StropError(f"option save_steps: {save} must be a multiple of eval_steps {cfg.eval_steps} to keep the best checkpoint")
        sched = {"eval_strategy": "steps", "eval_steps": cfg.eval_steps, "save_strategy": "steps", "save_steps": save}
    else:
        if cfg.save_steps:
            raise StropError("option save_steps: set eval_steps too (checkpoints follow evaluations so the best one can be kept)")
        sched = {"eval_strategy": "epoch", "save_strategy": "epoch"}
    return sched | {"load_best_model_at_end": cfg.keep_best, "metric_for_best_model": best_metric_key(cfg),
                    "greater_is_better": cfg.best_metric != "loss"}


def best_metric_key(cfg: TrainConfig) -> str:
    """The Trainer's name for what keep_best compares: eval_loss, or eval_gen_<metric> (callbacks.GenerationMetrics)."""
    from .gen_metrics import GEN_PREFIX

    return "eval_loss" if cfg.best_metric == "loss" else f"eval_{GEN_PREFIX}{cfg.best_metric}"


def common_args(cfg: TrainConfig, run: RunDir, report_to: list[str], has_eval: bool, checkpoint: tuple) -> dict:
    """TrainingArguments every objective shares (SFT, DPO, GRPO ...); ``checkpoint`` is :func:`checkpointing`'s
    decision, taken once per run (the free memory it reads changes)."""
    import torch

    return dict(
        output_dir=str(run.checkpoints),
        per_device_train_batch_size=cfg.micro_batch_size,
        per_device_eval_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of all steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=report_to,
        disable_tqdm=True,
        dataloader_num_workers=0,
        bf16=use_bf16(cfg),
        use_cpu=not torch.cuda.is_available(),  # transformers refuses bf16 on CPU unless told it is a CPU run
        **distributed.trainer_args(),
        # TRL turns checkpointing on by default; strop decides from memory (auto).
        gradient_checkpointing=checkpoint[0],
        **schedule(cfg, has_eval),
    )


def load_trainable(cfg: TrainConfig):
    """The base model in the dtype this run trains in, wrapped by its method, trainable weights in float32."""
    method = methods.get(cfg.method)
    dtype = weights_dtype(cfg, use_bf16(cfg), distributed.strategy())
    base = models.load_model(cfg.base_model, dtype, load_in_4bit=method.load_in_4bit, policy=models.policy(cfg))
    model = continued_adapter(base, cfg) if cfg.init_adapter else method.wrap(base, cfg)
    if dtype != "float32" and cfg.method != "full":
        float32_trainables(model)  # the optimizer updates float32 master weights
    return model


# the adapter types a method saves (adapter_config.json's peft_type)
ADAPTER_TYPES = {"lora": "LORA", "dora": "LORA", "qlora": "LORA", "ia3": "IA3"}


def continued_adapter(base, cfg: TrainConfig):
    """``base`` with the adapter in ``cfg.init_adapter`` loaded trainable: training goes on from its weights
    (a fine-tuned model trained further), and what is saved is again one adapter on ``base``."""
    from peft import PeftModel

    path = Path(cfg.init_adapter)
    config = path / "adapter_config.json"
    if not config.is_file():
        raise StropError(f"option init_adapter: {path} holds no adapter_config.json")
    kind = json.loads(config.read_text()).get("peft_type")
    if ADAPTER_TYPES.get(cfg.method) != kind:
        raise StropError(f"option init_adapter: {path} is a {kind} adapter; method {cfg.method} cannot train on from it")
    return PeftModel.from_pretrained(base, path, is_trainable=True)


def checkpointing(cfg: TrainConfig) -> tuple[bool, int, str]:
    """Gradient checkpointing for this run: on, how many layers (0: all), why (``plan.estimate.checkpointing_choice``)."""
    from ..plan.estimate import checkpoint_count, checkpointing_choice
    from ..plan.hardware import get_device
    from ..plan.shape import read_shape

    method = methods.get(cfg.method)
    model_dir = models.resolve(cfg.base_model)
    if not method.gradient_checkpointing:
        return checkpointing_choice(cfg, None, None, False)
    if cfg.gradient_checkpointing == "auto" and (isinstance(model_dir, str) or not (model_dir / "config.json").is_file()):
        return True, checkpoint_count(cfg), "on: no config.json to size the model from"
    import torch

    return checkpointing_choice(cfg, read_shape(model_dir), get_device("cuda" if torch.cuda.is_available() else "cpu"))
