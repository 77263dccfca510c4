"""A running job's finish estimate and results table, from a run directory written by hand."""
from __future__ import annotations

import base64
import json

from strop.service.progress import PLAN, encoded_results, estimated_finish, step_metrics_csv


def _write(root, rows):
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_estimate_uses_the_plan_then_the_measured_rate(tmp_path):
    job = {"status": "running", "started_at": 1000}
    assert estimated_finish(job, tmp_path, now=1001) is None  # neither a plan nor a step yet
    (tmp_path / PLAN).write_text(json.dumps({"total_s": 500, "steps": 100}))
    assert estimated_finish(job, tmp_path, now=1001) == 1500
    # two seconds a step over the last steps, 90 of 100 left, counted from when the last row was written
    _write(tmp_path, [{"step": s, "max_steps": 100, "time_s": 2.0 * s, "loss": 1.0} for s in range(1, 11)])
    logged = (tmp_path / "metrics.jsonl").stat().st_mtime
    assert estimated_finish(job, tmp_path, now=logged) == int(logged + 180)
    assert estimated_finish({**job, "status": "succeeded"}, tmp_path) is None
    assert estimated_finish(job, tmp_path, now=logged + 10_000) == int(logged + 10_000)  # never in the past


def test_results_table_joins_training_and_validation_rows():
    rows = [{"step": 1, "loss": 2.5, "mean_token_accuracy": 0.25}, {"step": 2, "loss": 2.0, "mean_token_accuracy": 0.5},
            {"step": 2, "eval_loss": 2.2, "eval_mean_token_accuracy": 0.4}, {"step": 2, "train_loss": 2.25}]
    text = step_metrics_csv(rows)
    assert text.splitlines() == ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy",
                                 "1,2.5,0.25,,", "2,2,0.5,2.2,0.4"]
    assert base64.b64decode(encoded_results(rows)).decode() == text
