"""The hosted API's fine_tuning.job.checkpoint objects, read from the run directory."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.rundir import RunDir
from .jobs import model_id


def list_checkpoints(job: dict, root: Path) -> list[dict]:
    """Complete checkpoints, newest first, with the metrics logged at their step."""
    found = []
    for d in RunDir(root).checkpoints.glob("checkpoint-*"):
        state = d / "trainer_state.json"
        if not state.is_file() or not d.name.removeprefix("checkpoint-").isdigit():
            continue  # the trainer writes the state last: without it the checkpoint is incomplete
        step = int(d.name.removeprefix("checkpoint-"))
        found.append((step, d, json.loads(state.read_text())))
    out = []
    for step, d, state in sorted(found, key=lambda t: t[0], reverse=True):
        out.append({"object": "fine_tuning.job.checkpoint", "id": f"ftckpt-{job['id'].removeprefix('ftjob-')[:12]}-{step}",
                    "created_at": int(d.stat().st_mtime), "fine_tuning_job_id": job["id"], "step_number": step,
                    "fine_tuned_model_checkpoint": f"{model_id(job)}:ckpt-step-{step}", "metrics": _metrics(state, step)})
    return out


def _metrics(state: dict, step: int) -> dict:
    m: dict = {"step": step}
    for row in state.get("log_history", []):
        if row.get("step") != step:
            continue
        if "loss" in row:
            m["train_loss"] = row["loss"]
        if "eval_loss" in row:
            m["valid_loss"] = row["eval_loss"]
    return m
