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
from .callbacks import MetricsLog, Progress
from .data import prepare
from .rundir import RunDir

TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def _check_output(run: RunDir, cfg: TrainConfig) -> Path | None:
    """Refuse to overwrite a run; with resume, find where to continue from."""
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
    return sched | {"load_best_model_at_end": True, "metric_for_best_model": "eval_loss", "greater_is_better": False}


def _rewind_metrics(run: RunDir, checkpoint: Path) -> None:
    """Drop log rows after the checkpoint, so a resumed run logs each step once."""
    step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    rows = [r for r in run.read_metrics() if r.get("step", 0) <= step]
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train(cfg: TrainConfig, *, progress: bool = True) -> RunDir:
    """Run one SFT job and return its run directory."""
    import datasets
    import torch
    from transformers import EarlyStoppingCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    method = methods.get(cfg.method)
    run = RunDir(Path(cfg.output_dir))
    resume_from = _check_output(run, cfg)
    report_to = _tracker(cfg, run)
    if resume_from is not None:
        _rewind_metrics(run, resume_from)
    set_seed(cfg.seed)
    tok = models.load_tokenizer(cfg.base_model)
    prepared = prepare(cfg, tok)
    run.root.mkdir(parents=True, exist_ok=True)
    run.config.write_text(to_yaml(cfg))
    run.data_report.write_text(json.dumps(prepared.report, indent=2))
    has_eval = bool(prepared.eval)

    model = method.wrap(models.load_model(cfg.base_model, cfg.dtype), cfg)
    args = SFTConfig(
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
        max_length=cfg.max_length,
        report_to=report_to,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        bf16=cfg.dtype == "bfloat16",
        **_schedule(cfg, has_eval),
    )
    callbacks = [MetricsLog(run.metrics)] + ([Progress()] if progress else [])
    if has_eval and cfg.early_stopping_patience > 0:
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
    t0 = time.monotonic()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    wall = time.monotonic() - t0
    save_final(trainer.model, tok, cfg, run)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    tokens = trainer.state.num_input_tokens_seen
    summary = {
        "method": cfg.method,
        "base_model": cfg.base_model,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "best_eval_loss": trainer.state.best_metric,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": round(100 * trainable / total, 4),
        "tokens_seen": tokens,
        "tokens_per_s": round(tokens / wall, 1) if wall else None,
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
    }
    run.summary.write_text(json.dumps(summary, indent=2))
    return run


def save_final(model, tok, cfg: TrainConfig, run: RunDir) -> None:
    """Write final/ atomically: adapter or full weights, tokenizer, base pointer."""
    tmp = run.root / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if methods.get(cfg.method).saves_adapter:
        # The alias or path the user named, so a copied run resolves on another machine.
        (tmp / "strop_base.json").write_text(json.dumps({"base_model": cfg.base_model, "method": cfg.method}))
    (tmp / "strop_run.json").write_text(json.dumps({"system_prompt": cfg.system_prompt, "method": cfg.method}))
    shutil.rmtree(run.final, ignore_errors=True)
    os.replace(tmp, run.final)
