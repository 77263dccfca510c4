"""One training lifecycle for every objective: check, resume, load, set up, train, save, summarise.

What differs between objectives (the data rows, TRL's trainer, the speed levers, extra summary
figures) comes from the objective's own module, ``sft`` or ``preference``, through eight functions
with the same names in each: ``check``, ``prepare``, ``evaluates``, ``checkpointing``, ``callbacks``,
``build``, ``speedups`` and ``summary``.
Everything else, the license gate and the environment record included, happens here once.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .. import models
from ..core.config import TrainConfig, to_yaml
from ..core.errors import StropError
from ..core.rundir import RunDir
from ..models.templates import set_template_kwargs, template_kwargs
from . import distributed, reliability
from .callbacks import AdaptiveThreads, MetricsLog, Progress
from .save import run_summary, save_final
from .setup import common_args

TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
# below this many validation rows a run that keeps its best checkpoint says the choice is fragile: on 4
# held-out persona rows the lowest loss kept step 18 of 45, naming the persona on 58% of held-out questions
# where the last checkpoint named it on 83% (docs/quality.md, "The checkpoint a run keeps")
FEW_EVAL_ROWS = 16


def objective_steps(objective: str):
    """The module that builds ``objective``'s part of a run (strop.train.sft or strop.train.preference)."""
    if objective == "sft":
        from . import sft

        return sft
    from . import preference

    return preference


def train(cfg: TrainConfig, *, progress: bool = True) -> RunDir:
    """Run one training job, whatever its objective, and return its run directory."""
    import datasets
    from transformers import EarlyStoppingCallback, set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from ..core.threads import Sizer
    from ..plan.hooks import check_licenses, write_env

    steps = objective_steps(cfg.objective)
    sizer = Sizer()  # starts reading the machine's load now, so the first choice has a window to read
    run = RunDir(Path(cfg.output_dir))
    resume_from = check_output(run, cfg)
    world = distributed.world()  # one process, or one rank of `strop train --nproc N`
    steps.check(cfg, world)
    if cfg.best_metric != "loss" and world.size > 1:
        raise StropError(f"option best_metric: {cfg.best_metric} is scored by the first process only; "
                         "use best_metric: loss with --nproc")
    if resume_from is not None:
        distributed.check_resume_world(run.fingerprint, world.size)
        reliability.check_fingerprint(run.fingerprint, reliability.fingerprint(cfg, world.size))
        reliability.check_resume(resume_from, cfg)  # no pickles unless --allow-pickle
    report_to = tracker(cfg, run)
    if resume_from is not None and world.is_main:
        rewind_metrics(run, resume_from)
        reliability.resume_from_checkpoint(run, resume_from)
    set_seed(cfg.seed)
    tok = models.load_tokenizer(cfg.base_model, models.policy(cfg))
    set_template_kwargs(tok, template_kwargs(cfg.enable_thinking))  # masks, samples and final/ see the same
    prepared = steps.prepare(cfg, tok)
    if resume_from is not None:
        reliability.check_preserve_mode(run, prepared.report)
    if world.is_main:  # the other ranks only read the run directory
        run.root.mkdir(parents=True, exist_ok=True)
        run.config.write_text(to_yaml(cfg))
        run.data_report.write_text(json.dumps(prepared.report, indent=2))
        if resume_from is None:
            record = reliability.fingerprint(cfg, world.size) | {"world_size": world.size}
            run.fingerprint.write_text(json.dumps(record, indent=2))
        write_env(run.root)
    licenses = check_licenses(cfg)  # stops on a known conflict with intended_use
    has_eval = bool(prepared.eval) and steps.evaluates(cfg)

    checkpoint = steps.checkpointing(cfg)
    stop = reliability.GracefulStop()
    guard = reliability.NonFiniteGuard(cfg.nan_policy, cfg.nan_max_consecutive_skips)
    # SaveBarrier before the manifest, StopTogether after the two stop deciders (train/distributed.py)
    callbacks = [MetricsLog(run.metrics), distributed.SaveBarrier(), reliability.CheckpointManifest(), stop, guard,
                 distributed.StopTogether(stop, guard)]
    callbacks += [Progress()] if progress else []
    callbacks.append(AdaptiveThreads(sizer))
    callbacks += steps.callbacks(cfg, tok, run, checkpoint)
    if has_eval and cfg.early_stopping_patience > 0 and cfg.keep_best:  # the callback needs the best-model tracking
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    data = {"train_dataset": datasets.Dataset.from_list(prepared.train),
            "eval_dataset": datasets.Dataset.from_list(prepared.eval) if has_eval else None}
    trainer = steps.build(cfg, common_args(cfg, run, report_to, has_eval, checkpoint), data, tok, callbacks,
                          prepared)
    trainer.remove_callback(PrinterCallback)  # our Progress replaces the default printers
    trainer.remove_callback(ProgressCallback)
    sample_log = reliability.harden(trainer, cfg, run, resume_from)  # pickle-free checkpoints, samples.jsonl
    if has_eval and cfg.keep_best and cfg.best_metric == "loss" and len(prepared.eval) < FEW_EVAL_ROWS and world.is_main:
        print(f"strop: note: final/ will be the checkpoint with the lowest loss on {len(prepared.eval)} validation "
              "rows, which on so few rows can be an early one; --keep-best false keeps the last (docs/quality.md)",
              file=sys.stderr, flush=True)
    t0 = time.monotonic()
    with reliability.disk_errors(run), steps.speedups(cfg, trainer):
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    wall = time.monotonic() - t0
    raise_if_stopped(stop, guard, trainer.state.global_step, cfg)
    with reliability.disk_errors(run):  # final/ is written via final.tmp, so a full disk leaves no half model
        distributed.save_final_once(trainer, tok, cfg, run, save_final)
    summary = steps.summary(cfg, run, trainer, run_summary(cfg, trainer, result, wall), wall, prepared) | {
        "licenses": licenses,
        "skipped_nonfinite_steps": guard.skipped_steps,
        "loss_spikes": sample_log.spikes,
        "threads": sizer.record(),
    }
    if world.is_main:
        run.summary.write_text(json.dumps(summary, indent=2))
    return run


def check_output(run: RunDir, cfg: TrainConfig) -> Path | None:
    """Refuse to overwrite a run; with resume, find where to continue from.

    First of all, before anything loads: the run directory can be created and written.
    """
    from ..core.paths import check_output as check_path

    check_path(run.root, kind="dir", label="--output-dir")
    if cfg.resume:
        ckpt = run.latest_checkpoint()
        if ckpt is None:
            raise StropError(f"{run.root}: --resume given but no complete checkpoint in {run.checkpoints}")
        return ckpt
    if run.final.exists() or run.checkpoints.exists():
        raise StropError(f"{run.root}: already holds a run; pass --resume to continue it or choose another --output-dir")
    return None


def tracker(cfg: TrainConfig, run: RunDir) -> list[str]:
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


def rewind_metrics(run: RunDir, checkpoint: Path) -> None:
    """Drop log rows after the checkpoint, so a resumed run logs each step once."""
    step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    rows = [r for r in run.read_metrics() if r.get("step", 0) <= step]
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))


def raise_if_stopped(stop, guard, step: int, cfg: TrainConfig) -> None:
    import signal

    if guard.aborted_at is not None:
        raise StropError(f"non-finite gradients at step {guard.aborted_at} (nan_policy {cfg.nan_policy}, "
                         f"skipped steps {guard.skipped_steps}); stopped without writing final/", exit_code=3)
    if stop.signal is not None:
        raise StropError(f"stopped by {signal.Signals(stop.signal).name} after step {step}; a checkpoint was saved, "
                         "continue with --resume", exit_code=reliability.EXIT_STOPPED)
