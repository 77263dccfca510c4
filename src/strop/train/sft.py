"""Supervised fine-tuning on top of TRL's SFTTrainer.

strop renders and masks the data itself (see data/render.py) and hands TRL
rows of ``input_ids`` + ``labels``; TRL then only batches and trains.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import time
from pathlib import Path

from .. import methods, models
from ..config import TrainConfig, to_yaml
from ..errors import StropError
from . import distributed, reliability
from .callbacks import (AdaptiveThreads, CheckpointFirstLayers, MetricsLog, Progress, checkpointed_layers,
                        generation_callbacks)
from .precision import float32_trainables, use_bf16, weights_dtype
from .data import prepare
from .rundir import RunDir

TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def _check_output(run: RunDir, cfg: TrainConfig) -> Path | None:
    """Refuse to overwrite a run; with resume, find where to continue from.

    First of all, before anything loads: the run directory can be created and written.
    """
    from ..paths import check_output

    check_output(run.root, kind="dir", label="--output-dir")
    if cfg.resume:
        ckpt = run.latest_checkpoint()
        if ckpt is None:
            raise StropError(f"{run.root}: --resume given but no complete checkpoint in {run.checkpoints}")
        return ckpt
    if run.final.exists() or run.checkpoints.exists():
        raise StropError(f"{run.root}: already holds a run; pass --resume to continue it or choose another --output-dir")
    return None


def _tracker(cfg: TrainConfig, run: RunDir) -> list[str]:
    if cfg.report_to == "none":
        return []
    import importlib.util

    package = TRACKER_PACKAGES[cfg.report_to]
    if importlib.util.find_spec(package) is None:
        raise StropError(f"option report_to: {cfg.report_to} needs the {package} package (pip install {package}), or use --report-to none")
    # Every tracker writes inside the run directory and never phones home.
    if cfg.report_to == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run.root / "tensorboard")
    elif cfg.report_to == "mlflow":
        os.environ.setdefault("MLFLOW_TRACKING_URI", (run.root / "mlruns").resolve().as_uri())
    elif cfg.report_to == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str(run.root))
    return [cfg.report_to]


def _schedule(cfg: TrainConfig, has_eval: bool) -> dict:
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
    return sched | {"load_best_model_at_end": cfg.keep_best, "metric_for_best_model": "eval_loss", "greater_is_better": False}


def _rewind_metrics(run: RunDir, checkpoint: Path) -> None:
    """Drop log rows after the checkpoint, so a resumed run logs each step once."""
    step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    rows = [r for r in run.read_metrics() if r.get("step", 0) <= step]
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))


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
        **_schedule(cfg, has_eval),
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


def run_summary(cfg: TrainConfig, trainer, result, wall: float) -> dict:
    """The figures every run records in summary.json, whatever its objective."""
    import torch

    trainable, total = param_counts(trainer.model)
    tokens = trainer.state.num_input_tokens_seen
    return {
        "method": cfg.method,
        "base_model": cfg.base_model,
        "gradient_checkpointing": trainer.args.gradient_checkpointing,
        "checkpointed_layers": checkpointed_layers(trainer.model) if trainer.args.gradient_checkpointing else 0,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "best_eval_loss": trainer.state.best_metric,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": round(100 * trainable / total, 4),
        "tokens_seen": tokens,
        "tokens_per_s": round(tokens / wall, 1) if wall and tokens else None,
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        **distributed.global_figures(cfg, trainer),  # world size, effective batch, LR schedule
    }


def _raise_if_stopped(stop, guard, step: int, cfg: TrainConfig) -> None:
    import signal

    if guard.aborted_at is not None:
        raise StropError(f"non-finite gradients at step {guard.aborted_at} (nan_policy {cfg.nan_policy}, "
                         f"skipped steps {guard.skipped_steps}); stopped without writing final/", exit_code=3)
    if stop.signal is not None:
        raise StropError(f"stopped by {signal.Signals(stop.signal).name} after step {step}; a checkpoint was saved, "
                         "continue with --resume", exit_code=reliability.EXIT_STOPPED)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB.

    Linux carries ru_maxrss across execve, so a run started from a big parent
    (a test runner, a notebook) would report the parent's peak; VmHWM belongs
    to the process's own address space and starts fresh at exec.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train(cfg: TrainConfig, *, progress: bool = True) -> RunDir:
    """Run one SFT job and return its run directory."""
    import datasets
    from transformers import EarlyStoppingCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    from ..threads import Sizer

    sizer = Sizer()  # starts reading the machine's load now, so the first choice has a window to read
    method = methods.get(cfg.method)
    run = RunDir(Path(cfg.output_dir))
    resume_from = _check_output(run, cfg)
    world = distributed.world()  # one process, or one rank of `strop train --nproc N`
    # kl's own backward would all-reduce a second time per step; auto turns itself off there (preserve.mode_for)
    if cfg.preserve == "kl" and world.size > 1:
        raise StropError("option preserve: kl trains in one process; with --nproc use --preserve replay")
    if resume_from is not None:
        distributed.check_resume_world(run.fingerprint, world.size)
        reliability.check_fingerprint(run.fingerprint, reliability.fingerprint(cfg, world.size))
        reliability.check_resume(resume_from, cfg)  # no pickles unless --allow-pickle
    report_to = _tracker(cfg, run)
    if resume_from is not None and world.is_main:
        _rewind_metrics(run, resume_from)
        reliability.resume_from_checkpoint(run, resume_from)
    set_seed(cfg.seed)
    tok = models.load_tokenizer(cfg.base_model, models.policy(cfg))
    prepared = prepare(cfg, tok)
    from ..plan.hooks import check_licenses, write_env

    if world.is_main:  # the other ranks only read the run directory
        run.root.mkdir(parents=True, exist_ok=True)
        run.config.write_text(to_yaml(cfg))
        run.data_report.write_text(json.dumps(prepared.report, indent=2))
        if resume_from is None:
            record = reliability.fingerprint(cfg, world.size) | {"world_size": world.size}
            run.fingerprint.write_text(json.dumps(record, indent=2))
        write_env(run.root)
    licenses = check_licenses(cfg)  # stops on a known conflict with intended_use
    has_eval = bool(prepared.eval)

    model = load_trainable(cfg)
    checkpoint = checkpointing(cfg)
    args = SFTConfig(
        **common_args(cfg, run, report_to, has_eval, checkpoint),
        # strop truncates while rendering; TRL refuses a max_length with padding-free rows.
        max_length=None if cfg.padding_free else cfg.max_length,
        # Padding-free rows hold no pad tokens, and the pad id doubles as <|im_end|>,
        # so "non_padding" would wrongly skip real end-of-turn tokens there.
        include_num_input_tokens_seen="all" if cfg.padding_free else "non_padding",
        padding_free=cfg.padding_free,
    )
    stop = reliability.GracefulStop()
    guard = reliability.NonFiniteGuard(cfg.nan_policy, cfg.nan_max_consecutive_skips)
    # SaveBarrier before the manifest, StopTogether after the two stop deciders (train/distributed.py)
    callbacks = [MetricsLog(run.metrics), distributed.SaveBarrier(), reliability.CheckpointManifest(), stop, guard,
                 distributed.StopTogether(stop, guard)]
    callbacks += [Progress()] if progress else []
    callbacks.append(AdaptiveThreads(sizer))
    on, layers, _ = checkpoint
    callbacks += [CheckpointFirstLayers(layers)] if on and layers else []  # only the first layers recompute
    callbacks += generation_callbacks(cfg, tok, run.metrics)  # BLEU/ROUGE/exact match on held-out prompts
    if has_eval and cfg.early_stopping_patience > 0 and cfg.keep_best:  # the callback needs the best-model tracking
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(prepared.train),
        eval_dataset=datasets.Dataset.from_list(prepared.eval) if has_eval else None,
        processing_class=tok,
        callbacks=callbacks,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # our Progress replaces the default printers
    trainer.remove_callback(ProgressCallback)
    sample_log = reliability.harden(trainer, cfg, run, resume_from)  # pickle-free checkpoints, samples.jsonl
    if prepared.anchors:  # preserve kl: keep the model near its base on general rows (train/preserve.py)
        from .preserve_kl import attach_kl

        attach_kl(trainer, prepared.anchors, cfg)
    t0 = time.monotonic()
    from .lm_head import labelled_positions_only
    from .fused import lean_layers
    from .precision import SHARDED_STRATEGIES
    from .varlen import per_example_attention

    with labelled_positions_only(cfg.score_labelled_only), reliability.disk_errors(run), \
            per_example_attention(trainer.model, cfg.padding_free and cfg.per_example_attention), \
            lean_layers(trainer.model, cfg.lean_layers and distributed.strategy() not in SHARDED_STRATEGIES):
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    wall = time.monotonic() - t0
    _raise_if_stopped(stop, guard, trainer.state.global_step, cfg)
    with reliability.disk_errors(run):  # final/ is written via final.tmp, so a full disk leaves no half model
        distributed.save_final_once(trainer, tok, cfg, run, save_final)
    summary = run_summary(cfg, trainer, result, wall) | {
        "licenses": licenses,
        "skipped_nonfinite_steps": guard.skipped_steps,
        "loss_spikes": sample_log.spikes,
        "preserve": prepared.report.get("preserve"),
        "threads": sizer.record(),
    }
    if world.is_main:
        run.summary.write_text(json.dumps(summary, indent=2))
    return run


def param_counts(model) -> tuple[int, int]:
    """(trainable, total); peft counts 4-bit weights at their real size, not their packed one."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))


def save_final(model, tok, cfg: TrainConfig, run: RunDir, *, weights_written: bool = False) -> None:
    """Write final/ atomically: adapter or full weights, tokenizer, base pointer.

    ``weights_written``: final.tmp already holds the weights (gathered from
    FSDP/ZeRO-3 shards by the Trainer, see distributed.save_final_once).
    """
    method = methods.get(cfg.method)
    tmp = run.root / "final.tmp"
    if not weights_written:
        shutil.rmtree(tmp, ignore_errors=True)
        if method.save is not None:
            method.save(model, tmp)  # only the weights this method trains
        else:
            model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if method.saves_adapter:
        # The alias or path the user named, so a copied run resolves on another machine.
        base = {"base_model": cfg.base_model, "method": cfg.method, "load_in_4bit": method.load_in_4bit}
        (tmp / "strop_base.json").write_text(json.dumps(base))
    (tmp / "strop_run.json").write_text(json.dumps({"system_prompt": cfg.system_prompt, "method": cfg.method}))
    bad = reliability.non_finite_tensors(tmp)
    if bad:
        shutil.rmtree(tmp)
        raise StropError(f"the trained weights hold non-finite values ({bad[0]}); final/ not written", exit_code=3)
    shutil.rmtree(run.final, ignore_errors=True)
    os.replace(tmp, run.final)
