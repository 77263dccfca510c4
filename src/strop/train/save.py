"""The end of a run: final/ written atomically, and the figures every run records in summary.json."""
from __future__ import annotations

import json
import os
import resource
import shutil
from pathlib import Path

from .. import methods, models
from ..core.config import TrainConfig
from ..core.errors import StropError
from ..core.rundir import RunDir
from ..models.templates import template_kwargs
from . import distributed, reliability
from .callbacks import checkpointed_layers


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
    models.save_tokenizer(tok, tmp)
    if method.saves_adapter:
        # The alias or path the user named, so a copied run resolves on another machine.
        base = {"base_model": cfg.base_model, "method": cfg.method, "load_in_4bit": method.load_in_4bit}
        (tmp / "strop_base.json").write_text(json.dumps(base))
    info = {"system_prompt": cfg.system_prompt, "method": cfg.method}
    kwargs = template_kwargs(cfg.enable_thinking)
    if kwargs:  # generation, serving and export render the template as training did
        info["chat_template_kwargs"] = kwargs
    (tmp / "strop_run.json").write_text(json.dumps(info))
    bad = reliability.non_finite_tensors(tmp)
    if bad:
        shutil.rmtree(tmp)
        raise StropError(f"the trained weights hold non-finite values ({bad[0]}); final/ not written", exit_code=3)
    shutil.rmtree(run.final, ignore_errors=True)
    os.replace(tmp, run.final)


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
        "best_eval_loss": trainer.state.best_metric if cfg.best_metric == "loss" else None,
        "best_metric": {"name": trainer.args.metric_for_best_model.removeprefix("eval_"),
                        "value": trainer.state.best_metric} if trainer.args.metric_for_best_model else None,
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


def param_counts(model) -> tuple[int, int]:
    """(trainable, total); peft counts 4-bit weights at their real size, not their packed one."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))


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
