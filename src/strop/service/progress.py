"""What a running job's metrics say to the hosted API: step totals, the finish estimate, the results file.

The trainer appends one row per logged step to the run's metrics.jsonl
(step, max_steps, time_s, loss, mean_token_accuracy, eval_* ...); the
service reads it, never the trainer's memory, so a restarted service gives
the same answers. Before the first step is logged the estimate comes from
the planner (plan.json, written by the runner as training starts).
"""
from __future__ import annotations

import base64
import csv
import io
import json
import time
from pathlib import Path

from ..core.rundir import RunDir

PLAN = "plan.json"
RATE_WINDOW = 5  # logged steps the step rate is measured over: recent enough to follow a slowdown
# OpenAI's results file: one row per step, these columns, in this order
RESULT_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")


def estimated_finish(job: dict, root: Path, now: float | None = None) -> int | None:
    """Unix time the job should end: measured step rate once steps are logged, the plan before."""
    if job["status"] != "running":
        return None
    now = time.time() if now is None else now
    rows = _train_rows(root)
    if len(rows) >= 2 and rows[-1].get("max_steps"):
        recent = rows[-RATE_WINDOW - 1:]
        steps = recent[-1]["step"] - recent[0]["step"]
        seconds = recent[-1]["time_s"] - recent[0]["time_s"]
        if steps > 0 and seconds >= 0:
            left = max(rows[-1]["max_steps"] - rows[-1]["step"], 0) * seconds / steps
            logged_at = (root / "metrics.jsonl").stat().st_mtime
            return int(max(logged_at + left, now))
    plan = root / PLAN
    if job.get("started_at") and plan.is_file():
        try:
            total_s = float(json.loads(plan.read_text())["total_s"])
        except (ValueError, KeyError, TypeError):
            return None
        return int(max(job["started_at"] + total_s, now))
    return None


def _train_rows(root: Path) -> list[dict]:
    try:
        rows = RunDir(root).read_metrics()
    except (ValueError, OSError):  # a row half-written this instant
        return []
    return [r for r in rows if "loss" in r and "time_s" in r]


def step_metrics_csv(rows: list[dict]) -> str:
    """The per-step results table: training rows, with validation figures on the steps that have them."""
    by_step: dict[int, dict] = {}
    for row in rows:
        step = int(row.get("step", 0))
        out = by_step.setdefault(step, {"step": step})
        if "loss" in row:
            out["train_loss"] = row["loss"]
            out["train_accuracy"] = row.get("mean_token_accuracy")
        if "eval_loss" in row:
            out["valid_loss"] = row["eval_loss"]
            out["valid_mean_token_accuracy"] = row.get("eval_mean_token_accuracy")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for step in sorted(by_step):
        if "train_loss" in by_step[step] or "valid_loss" in by_step[step]:
            writer.writerow({k: _cell(by_step[step].get(k)) for k in RESULT_COLUMNS})
    return buf.getvalue()


def _cell(value) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def encoded_results(rows: list[dict]) -> bytes:
    """OpenAI serves a job's results file base64-encoded; clients written for it decode it, so strop does the same."""
    return base64.b64encode(step_metrics_csv(rows).encode())


def write_plan(cfg, root: Path) -> None:
    """The planner's time for this run, for the estimate before the first step (best effort: a plan that
    cannot be made, e.g. for a model without config.json, leaves only the measured estimate)."""
    try:
        from ..plan.estimate import make_plan

        plan = make_plan(cfg)
        (root / PLAN).write_text(json.dumps({"total_s": plan["time"]["total_s"], "steps": plan["time"]["steps"]}))
    except Exception:  # noqa: BLE001  the estimate is a courtesy; training must not fail for it
        pass
