"""What one training process does differently when it is one of several.

`strop train --nproc N` (train/launch.py) starts N copies of `strop train`
under accelerate's launcher; each copy learns its place from the variables
torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE) and the strategy from the ones
accelerate sets (ACCELERATE_USE_FSDP, ACCELERATE_USE_DEEPSPEED ...). They are
read when asked, never at import. With one process every helper here is a
no-op, so a plain run takes exactly the path it always took.

The rules the training code follows:

* rank 0 alone writes the run directory (config, fingerprint, metrics,
  summary, final/); the Trainer already saves checkpoints from rank 0 only,
  except each rank's RNG state, which is why the manifest waits for everyone;
* every rank decides to stop at the same step: a signal or a non-finite
  update seen by one process stops them all (``StopTogether``);
* a run resumes only with the number of processes it started with.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from transformers import TrainerCallback

from .launch import check_resume_world  # noqa: F401  (sft.py calls it here, beside the other rank rules)


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))


def strategy() -> str:
    """The strategy this process runs under: none, ddp, fsdp, deepspeed-zero2/3."""
    env = os.environ
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return f"deepspeed-zero{env.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', '2')}"
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "fsdp"
    return "ddp" if world().size > 1 else "none"


def sharded() -> bool:
    """Weights split across processes: saving them needs every rank's part."""
    return strategy() in ("fsdp", "deepspeed-zero3")


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def trainer_args() -> dict:
    """TrainingArguments a multi-process run needs."""
    if world().size == 1:
        return {}
    # Every strop method uses all of its trainable weights in each forward, so
    # DDP's extra graph walk looking for unused ones would only cost time.
    return {"ddp_find_unused_parameters": False}


# -- callbacks -----------------------------------------------------------------
class SaveBarrier(TrainerCallback):
    """Wait for every rank to finish its part of a checkpoint before it is sealed.

    Rank 0 writes the weights and optimizer, but each rank writes its own
    ``rng_state_N.pth``; the manifest (CheckpointManifest, next in the list)
    must not hash a file another rank is still writing.
    """

    def on_save(self, args, state, control, **kwargs):
        barrier()


class StopTogether(TrainerCallback):
    """Share each rank's stop decision, so all ranks stop at the same step.

    A signal may reach one process only (``kill PID``) or reach them a step
    apart; a rank that stopped alone would leave the others waiting in the
    next gradient exchange. One tiny all-reduce per step settles it. Placed
    after GracefulStop and NonFiniteGuard, whose verdicts it spreads.
    """

    def __init__(self, stop, guard) -> None:
        self.stop = stop
        self.guard = guard

    def on_step_end(self, args, state, control, **kwargs):
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        aborted = self.guard.aborted_at or 0
        flags = torch.tensor([self.stop.signal or 0, aborted], dtype=torch.long)
        if dist.get_backend() == "nccl":
            flags = flags.cuda()
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        sig, aborted = (int(x) for x in flags.tolist())
        if aborted:
            self.guard.aborted_at = aborted
            control.should_training_stop = True
            control.should_save = False
        elif sig:
            self.stop.signal = self.stop.signal or sig
            control.should_save = True
            control.should_training_stop = True


# -- results -------------------------------------------------------------------
def global_figures(cfg, trainer) -> dict:
    """Batch, schedule and process figures for summary.json, counted over all ranks.

    ``tokens_seen`` in the summary is already global: the Trainer sums
    ``num_input_tokens_seen`` over processes.
    """
    w = world()
    args = trainer.args
    total = trainer.state.max_steps
    return {
        "world_size": w.size,
        "distributed": strategy(),
        "effective_batch_size": cfg.micro_batch_size * cfg.gradient_accumulation_steps * w.size,
        "lr_schedule": {"type": cfg.lr_scheduler_type, "peak_lr": cfg.learning_rate,
                        "warmup_steps": args.get_warmup_steps(total), "total_steps": total},
    }


def save_final_once(trainer, tok, cfg, run, save_final) -> None:
    """Write final/ exactly once, whatever the number of processes.

    DDP keeps a whole copy of the weights on every rank, so rank 0 writes them
    alone. FSDP and ZeRO-3 hold a slice per rank: every rank takes part in
    gathering them (``trainer.save_model``, which writes from rank 0), then
    rank 0 adds strop's files next to the weights.
    """
    w = world()
    if sharded():
        tmp = run.root / "final.tmp"
        if w.is_main:
            shutil.rmtree(tmp, ignore_errors=True)  # a save cut short earlier
        barrier()
        trainer.save_model(str(tmp))
        if w.is_main:
            save_final(trainer.model, tok, cfg, run, weights_written=True)
    elif w.is_main:
        save_final(trainer.model, tok, cfg, run)
    barrier()  # no rank reports success before final/ exists
