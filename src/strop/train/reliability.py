"""Make crashes boring: verified checkpoints, honest resume, clean stops, no NaN saves.

* Every checkpoint gets a ``manifest.json`` (file list + sha256) written last,
  after the files are fsynced; resume only trusts a checkpoint whose manifest
  verifies, so a save cut short by a kill is never picked.
* A run records a fingerprint (data hashes, method, base model, effective
  batch ...); ``--resume`` refuses a run whose fingerprint changed and names
  the field, instead of silently training something else.
* SIGTERM/SIGINT finish the current step, write a checkpoint and stop; a second
  Ctrl-C aborts at once.
* A non-finite loss or gradient norm is caught at the step it happens: the
  ``abort`` policy stops without saving, ``skip`` drops that update (up to
  ``nan_max_consecutive_skips`` in a row); a checkpoint holding a non-finite
  tensor is deleted rather than kept.
* ``harden`` gives any trainer strop builds pickle-free checkpoints
  (checkpoint_io.py) and the per-step sample log (samples.py); a full disk
  during a save ends the run with one line, keeping the last sealed checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from pathlib import Path

from transformers import TrainerCallback

from ..core.errors import StropError
from ..core.manifest import sha256_file, write_manifest
from ..core.paths import disk_full_reason
from ..core.pickle_guard import refuse_pickles

EXIT_STOPPED = 143  # the conventional 128 + SIGTERM, so schedulers see a clean stop


def non_finite_tensors(directory: Path) -> list[str]:
    """Names of safetensors tensors holding NaN or Inf in ``directory``."""
    import torch
    from safetensors.torch import load_file

    bad = []
    for f in directory.glob("*.safetensors"):
        for name, t in load_file(f).items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                bad.append(f"{f.name}:{name}")
    return bad


class CheckpointManifest(TrainerCallback):
    """After the Trainer writes checkpoint-N, vet it and seal it with a manifest."""

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not ckpt.is_dir():
            return
        bad = non_finite_tensors(ckpt)
        if bad:
            import shutil

            shutil.rmtree(ckpt)  # never leave a poisoned checkpoint for resume to find
            raise StropError(f"checkpoint at step {state.global_step} held non-finite values ({bad[0]}); not saved")
        write_manifest(ckpt)


# -- fingerprint -------------------------------------------------------------
def file_digest(path: str) -> str | None:
    return sha256_file(Path(path)) if path and Path(path).is_file() else None


def fingerprint(cfg, world_size: int = 1) -> dict:
    return {
        "data_sha256": file_digest(cfg.data),
        "eval_data_sha256": file_digest(cfg.eval_data),
        "base_model": cfg.base_model,
        "method": cfg.method,
        "effective_batch": cfg.micro_batch_size * cfg.gradient_accumulation_steps * world_size,
        "max_length": cfg.max_length,
        "val_size": cfg.val_size,
        "seed": cfg.seed,
        "train_on_inputs": cfg.train_on_inputs,
        "objective": cfg.objective,
        "preserve": getattr(cfg, "preserve", "none"),
        "preserve_ratio": getattr(cfg, "preserve_ratio", 0.0),
        "preserve_weight": getattr(cfg, "preserve_weight", 2.0),
        "preserve_warmup": getattr(cfg, "preserve_warmup", 0.0),
        "preserve_select": getattr(cfg, "preserve_select", "random"),
        "preserve_pack": getattr(cfg, "preserve_pack", False),  # another rounding: a resume would not be exact
        "best_metric": getattr(cfg, "best_metric", "loss"),  # the best value kept so far is in its units
    }


def check_fingerprint(path: Path, current: dict) -> None:
    if not path.is_file():
        raise StropError(f"{path}: missing, so this run cannot be checked for resume; start a new --output-dir")
    saved = json.loads(path.read_text())
    for key, value in current.items():
        if key in saved and saved[key] != value:  # a key an older strop did not record is not checked
            raise StropError(f"cannot resume: {key} changed since the run started ({saved.get(key)!r} -> {value!r})")


def check_preserve_mode(run, report: dict) -> None:
    """The protection ``auto`` resolved to when the run started is the one it resumes with: a newer strop may
    resolve it differently (full fine-tuning got kl), and a resume that switched it on would not be exact."""
    if not run.data_report.is_file():
        return
    before = (json.loads(run.data_report.read_text()).get("preserve") or {}).get("mode")
    now = (report.get("preserve") or {}).get("mode")
    if before and now and before != now:
        raise StropError(f"cannot resume: preserve resolved to {now} now but the run started with {before}; "
                         f"pass --preserve {before} to resume as it started")


def _step(checkpoint: Path) -> int:
    return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]


def _number(checkpoint: Path) -> int:
    tail = checkpoint.name.rpartition("-")[2]
    return int(tail) if tail.isdigit() else -1


def check_resume(checkpoint: Path, cfg) -> None:
    """Before anything loads: the checkpoint holds no pickle, unless the user allowed them.

    Under FSDP or DeepSpeed the sharded optimizer state is in those libraries' own
    (pickling) formats, written by this run; it is the one exception.
    """
    from .distributed import strategy

    if strategy() not in ("fsdp", "deepspeed-zero2", "deepspeed-zero3"):
        refuse_pickles(checkpoint, cfg.allow_pickle)


SET_ASIDE = "set-aside"  # under checkpoints/, outside the checkpoint-* names the Trainer rotates and resumes from


def set_aside_unsealed(run, checkpoint: Path) -> list[tuple[Path, Path, str]]:
    """Move saves newer than the checkpoint resume picked into checkpoints/set-aside/ (rank 0 only).

    They were never trusted (no manifest, or one that does not verify) and would upset
    checkpoint rotation, but they are the user's files: moved, never deleted.
    Returns (old path, new path, why) for each.
    """
    from ..core.manifest import manifest_problem

    moved = []
    for d in sorted(run.checkpoints.glob("checkpoint-*"), key=_number):
        if d.is_dir() and _number(d) > _number(checkpoint):
            why = manifest_problem(d) or "newer than the checkpoint resumed from"
            aside = run.checkpoints / SET_ASIDE
            aside.mkdir(exist_ok=True)
            target, n = aside / d.name, 1
            while target.exists():  # set aside before, in an earlier resume
                target, n = aside / f"{d.name}.{n}", n + 1
            os.replace(d, target)
            moved.append((d, target, why))
    return moved


def resume_line(run, checkpoint: Path, moved: list[tuple[Path, Path, str]]) -> str:
    """The one line a resume prints: where it continues from, and what it set aside and why."""
    line = f"strop: resuming from {checkpoint.name} (step {_step(checkpoint)})"
    for old, new, why in moved:
        line += f"; set aside {old.name} ({why}) as {new.relative_to(run.root)}"
    return line


def resume_from_checkpoint(run, checkpoint: Path) -> None:
    """Set aside newer unsealed saves and say on stderr which checkpoint the run continues from."""
    import sys

    print(resume_line(run, checkpoint, set_aside_unsealed(run, checkpoint)), file=sys.stderr, flush=True)


def harden(trainer, cfg, run, resume_from: Path | None):
    """Pickle-free checkpoints and the per-step sample log, for any trainer strop builds. Returns the log."""
    from ..patches import checkpoints as checkpoint_io
    from . import samples

    checkpoint_io.install(trainer, cfg.allow_pickle)
    history = []
    if resume_from is not None:
        history = samples.rewind(run.samples, _step(resume_from), write=trainer.is_world_process_zero())
    log = samples.SampleLog(run.samples, cfg.loss_spike_factor, history)
    samples.track(trainer, log)
    trainer.add_callback(log)
    return log


def discard_partial_saves(run) -> None:
    """Remove a checkpoint that never got its manifest and a final.tmp: a save cut short, giving its space back."""
    for d in run.checkpoints.glob("checkpoint-*"):
        if d.is_dir() and not (d / "manifest.json").is_file():
            shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(run.root / "final.tmp", ignore_errors=True)  # a final/ cut short is never renamed into place


@contextlib.contextmanager
def disk_errors(run):
    """A full disk mid-save ends the run with one line (exit 4); the last sealed checkpoint is untouched."""
    try:
        yield
    except StropError:
        raise
    except Exception as exc:
        why = disk_full_reason(exc)
        if why is None:
            raise
        discard_partial_saves(run)
        good = run.latest_checkpoint()
        kept = f"the last complete checkpoint is {good.name}" if good else "no complete checkpoint was written yet"
        raise StropError(f"disk full while writing to {run.root} ({why}); {kept}; free space, then "
                         "continue with --resume", exit_code=4) from None


# -- stopping on signals -----------------------------------------------------
class GracefulStop(TrainerCallback):
    """First SIGTERM/SIGINT: checkpoint after this step and stop. Second SIGINT: abort now."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def on_train_begin(self, args, state, control, **kwargs):
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        if self.signal is not None:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


# -- numerics ----------------------------------------------------------------
class NonFiniteGuard(TrainerCallback):
    """Check every update before it is applied, per ``nan_policy``.

    The optimizer's ``step`` is wrapped: when any gradient is non-finite the
    update is dropped (weights and optimizer moments untouched). ``skip``
    carries on, up to ``max_skips`` consecutive drops; ``abort`` stops at once
    without saving. (The Trainer's logged loss filters NaN by default, so the
    gradients are the reliable place to look.)
    """

    def __init__(self, policy: str, max_skips: int) -> None:
        self.policy = policy
        self.max_skips = max_skips
        self.consecutive = 0
        self.skipped_steps: list[int] = []
        self.aborted_at: int | None = None

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is None or getattr(optimizer, "_strop_guarded", False):
            return
        inner_step = optimizer.step

        def guarded_step(*a, **kw):
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if all(bool(p.grad.isfinite().all()) for p in params):
                self.consecutive = 0
                return inner_step(*a, **kw)
            self.consecutive += 1
            self.skipped_steps.append(state.global_step + 1)
            for p in params:
                p.grad = None
            if self.policy == "abort" or self.consecutive > self.max_skips:
                self.aborted_at = state.global_step + 1
            return None

        optimizer.step = guarded_step
        optimizer._strop_guarded = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.aborted_at is not None:
            control.should_training_stop = True
            control.should_save = False
