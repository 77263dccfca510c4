"""Preference and reinforcement fine-tuning on top of TRL's trainers: these objectives' part of a run.

One function per objective builds (TRL config class, trainer); everything
around it (run directory, callbacks, trackers, saving, summary) is the one
lifecycle in strop.train.run, shared with SFT. The reference model is implicit for adapter methods (TRL switches
the adapter off) and an explicit frozen copy for full fine-tuning.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .. import methods, models
from ..core.config import TrainConfig
from ..core.errors import StropError
from ..core.rundir import RunDir
from ..models.precision import load_dtype, use_bf16, weights_dtype
from .preference_data import build_rows
from .setup import checkpointing as setup_checkpointing
from .setup import load_trainable
from .sft_data import Prepared


def _policy(cfg: TrainConfig):
    return load_trainable(cfg)


def _reference(cfg: TrainConfig):
    """None for adapters (TRL disables the adapter); a frozen copy of the base for full fine-tuning."""
    if methods.get(cfg.method).saves_adapter:
        return None
    ref = models.load_model(cfg.base_model, weights_dtype(cfg, use_bf16(cfg)), policy=models.policy(cfg))
    ref.eval()
    ref.requires_grad_(False)
    return ref


def _dpo(cfg, common, data, tok, callbacks):
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(**common, beta=cfg.beta, loss_type=[cfg.dpo_loss_type], label_smoothing=cfg.label_smoothing,
                     max_length=cfg.max_length)
    return DPOTrainer(model=_policy(cfg), ref_model=_reference(cfg), args=args, processing_class=tok,
                      callbacks=callbacks, **data)


def _kto(cfg, common, data, tok, callbacks):
    from trl import KTOConfig, KTOTrainer

    if cfg.micro_batch_size < 2:
        raise StropError("option micro_batch_size: KTO estimates its KL term within a batch, needs at least 2")
    args = KTOConfig(**common, beta=cfg.beta, max_length=cfg.max_length)
    return KTOTrainer(model=_policy(cfg), ref_model=_reference(cfg), args=args, processing_class=tok,
                      callbacks=callbacks, **data)


def _orpo(cfg, common, data, tok, callbacks):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # strop documents that ORPO/CPO are experimental in TRL
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    args = ORPOConfig(**common, beta=cfg.beta, max_length=cfg.max_length)
    return ORPOTrainer(model=_policy(cfg), args=args, processing_class=tok, callbacks=callbacks, **data)


def _cpo(cfg, common, data, tok, callbacks):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    extra = {"loss_type": "simpo", "cpo_alpha": 0.0, "simpo_gamma": cfg.simpo_gamma} if cfg.objective == "simpo" else {}
    args = CPOConfig(**common, beta=cfg.beta, max_length=cfg.max_length, **extra)
    return CPOTrainer(model=_policy(cfg), args=args, processing_class=tok, callbacks=callbacks, **data)


def _reward(cfg, common, data, tok, callbacks):
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(**common, max_length=cfg.max_length)
    return RewardTrainer(model=reward_policy(cfg, tok), args=args, processing_class=tok, callbacks=callbacks, **data)


def reward_policy(cfg: TrainConfig, tok):
    """A sequence-classification model with one output (the reward), LoRA-wrapped or full."""
    import torch
    from transformers import AutoModelForSequenceClassification

    path = models.resolve(cfg.base_model)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=getattr(torch, load_dtype(cfg)), **models.policy(cfg).kwargs(path))
    model.config.pad_token_id = tok.pad_token_id  # the reward is read at the last non-pad token
    if cfg.method == "full":
        return model
    from peft import get_peft_model

    lora = methods.lora_config(model, cfg)
    lora.task_type = "SEQ_CLS"
    lora.modules_to_save = ["score"]  # the new head is trained in full
    return get_peft_model(model, lora)


def _grpo(cfg, common, data, tok, callbacks):
    from trl import GRPOConfig, GRPOTrainer

    from . import rewards

    funcs = [rewards.load(spec) for spec in cfg.reward_funcs]
    if cfg.grader:  # an OpenAI grader object; python graders run in strop.graders.sandbox
        from .. import graders

        hide = [p for p in os.environ.get("STROP_SANDBOX_HIDE", "").split(os.pathsep) if p]
        funcs.append(graders.reward_function(graders.load_grader(cfg.grader), python_enabled=True,
                                             model_endpoint=graders.endpoint_from_env(), hide=hide))
    classes = [None] * len(funcs)
    if cfg.reward_model:
        funcs.append(load_reward_model(cfg.reward_model))
        classes.append(models.load_tokenizer(cfg.reward_model))
    data = {"train_dataset": data["train_dataset"]}  # evaluation would sample again: too slow to do each epoch
    common = common | {"eval_strategy": "no", "load_best_model_at_end": False}
    common.pop("metric_for_best_model", None)
    common.pop("greater_is_better", None)
    common.pop("eval_steps", None)
    args = GRPOConfig(**common, beta=cfg.beta, num_generations=cfg.num_generations,
                      max_completion_length=cfg.max_completion_length, temperature=cfg.temperature,
                      log_completions=False)
    return GRPOTrainer(model=_policy(cfg), reward_funcs=funcs, args=args, processing_class=tok,
                       reward_processing_classes=classes, callbacks=callbacks, **data)


def load_reward_model(name: str):
    """A reward model trained by ``--objective reward`` (run directory or its final/), in eval mode."""
    import torch
    from transformers import AutoModelForSequenceClassification

    path = models.resolve(name)
    base_file = Path(path) / "strop_base.json"
    try:
        if base_file.is_file():
            from peft import PeftModel

            base = json.loads(base_file.read_text())["base_model"]
            base_path = models.resolve(base)
            model = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1, dtype=torch.float32,
                                                                       **models.LoadPolicy().kwargs(base_path))
            models.check_weights(path, allow_pickle=False)
            model = PeftModel.from_pretrained(model, path)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32,
                                                                       **models.LoadPolicy().kwargs(path))
    except (OSError, ValueError) as exc:
        raise StropError(f"reward model {name}: cannot load it as a reward model ({exc})") from None
    tok = models.load_tokenizer(name)
    model.config.pad_token_id = tok.pad_token_id
    model.eval()
    return model


TRAINERS = {"dpo": _dpo, "kto": _kto, "orpo": _orpo, "simpo": _cpo, "cpo": _cpo, "reward": _reward, "grpo": _grpo}


def check(cfg: TrainConfig, world) -> None:
    """What the config check cannot see: a GRPO grader file is read now, before the model loads."""
    if cfg.objective == "grpo" and cfg.grader:
        from ..graders import load_grader

        load_grader(cfg.grader)


def evaluates(cfg: TrainConfig) -> bool:
    return cfg.objective != "grpo"  # evaluation would sample again: too slow to do each epoch


def prepare(cfg: TrainConfig, tok) -> Prepared:
    train_rows, eval_rows, report = build_rows(cfg, tok)
    return Prepared(train_rows, eval_rows, report)


def checkpointing(cfg: TrainConfig) -> tuple[bool, int, str]:
    on, layers, why = setup_checkpointing(cfg)
    if layers and cfg.checkpoint_layers != "all":
        raise StropError(f"option checkpoint_layers: works with objective sft only; TRL's {cfg.objective} trainer "
                         "switches checkpointing back on for every layer (leave it at all)")
    return on, 0, why  # where auto would recompute only some layers, these objectives recompute all


def callbacks(cfg: TrainConfig, tok, run: RunDir, checkpoint: tuple) -> list:
    return []


def build(cfg: TrainConfig, common: dict, data: dict, tok, callbacks: list, prepared: Prepared):
    return TRAINERS[cfg.objective](cfg, common, data, tok, callbacks)


def speedups(cfg: TrainConfig, trainer):
    """The one lever of docs/performance.md that reaches TRL's preference trainers: DPO, KTO, GRPO and RLOO
    compute their log-probabilities through TRL's fused LM head, as SFT does, so on a CPU it scores only the
    completion positions (``score_labelled_only``). The lean layers and per-example attention patch SFT's own
    forward and batches; these trainers run theirs."""
    from ..patches.lm_head import labelled_positions_only

    return labelled_positions_only(cfg.score_labelled_only)


def summary(cfg: TrainConfig, run: RunDir, trainer, figures: dict, wall: float, prepared: Prepared) -> dict:
    last = {}
    for row in run.read_metrics():  # the last value of every objective-specific metric
        last.update({k: v for k, v in row.items() if "/" in k or k.startswith(("reward", "kl", "accuracy", "margin"))})
    summary = {"objective": cfg.objective} | figures | {"last_metrics": last}
    if not summary["tokens_seen"]:  # TRL's paired batches have no input_ids for the Trainer to count
        summary["tokens_seen"] = _tokens_processed(trainer)
        summary["tokens_per_s"] = round(summary["tokens_seen"] / wall, 1) if wall and summary["tokens_seen"] else None
    return summary


def _tokens_processed(trainer) -> int:
    """Tokens the forward passes read: per epoch, every token-id column of the tokenized training set
    (``prompt_ids``/``chosen_ids``/``rejected_ids`` in TRL 1.x, ``*input_ids`` before; a pair's prompt
    goes in once with each answer), times the epochs run."""
    data = trainer.train_dataset
    if data is None:
        return 0
    columns = [c for c in data.column_names if c.endswith(("_ids", "input_ids")) and "mask" not in c]
    per_epoch = sum(len(ids) for c in columns for ids in data[c])
    paired = [p for p in ("prompt_ids", "prompt_input_ids") if p in columns]
    if paired and any(c.startswith("rejected") for c in columns):
        per_epoch += sum(len(ids) for ids in data[paired[0]])  # the prompt goes in with both answers
    return int(per_epoch * (trainer.state.epoch or 0.0))


# The metric each objective should move, as TRL logs it (shown after training).
HEADLINE = {"dpo": "rewards/margins", "kto": "rewards/margins", "orpo": "rewards/margins", "simpo": "rewards/margins",
            "cpo": "rewards/margins", "reward": "accuracy", "grpo": "reward"}


def describe(cfg: TrainConfig, run: RunDir) -> str:
    """Two lines for the CLI: what was trained and where it went."""
    summary = json.loads(run.summary.read_text())
    key = HEADLINE[cfg.objective]
    rows = [r for r in run.read_metrics() if key in r]
    moved = f", {key} {rows[0][key]:.4f} -> {rows[-1][key]:.4f}" if rows else ""
    return (f"trained {cfg.objective} ({cfg.method}) on {cfg.base_model}: {summary['steps']} steps, "
            f"train loss {summary['train_loss']:.4f}{moved}, peak RSS {summary['peak_rss_mb']:.0f} MB\n"
            f"run directory: {run.root}  (model in {run.final})")
