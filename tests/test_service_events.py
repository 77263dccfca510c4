"""The service's event log: after a resumed job, steps already logged are not logged again."""
from __future__ import annotations

import json

from strop.service.store import Store, new_id
from strop.service.worker import Running, Worker


def _metrics(root, rows):
    root.mkdir(parents=True, exist_ok=True)
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _steps(store, job_id):
    events = []
    after = None
    while page := store.events(job_id, after=after, limit=50):
        events += page
        after = page[-1]["id"]
    metrics = [e for e in reversed(events) if e["type"] == "metrics"]
    return [(e["data"]["step"], "train_loss" in e["data"]) for e in metrics]


def test_resumed_job_logs_each_step_once(tmp_path):
    store, runs = Store(tmp_path / "s.db"), tmp_path / "runs"
    job_id = new_id("ftjob")
    worker = Worker(store, tmp_path / "files", runs)
    root = runs / job_id
    first = [{"step": s, "loss": 2.0 - s / 10} for s in range(1, 8)] + [{"step": 4, "eval_loss": 1.5}]
    _metrics(root, first)
    worker.report_metrics(job_id, Running(proc=None))
    assert _steps(store, job_id) == [(s, True) for s in range(1, 8)] + [(4, False)]
    # the service stopped; the job resumes from checkpoint-4: metrics.jsonl is rewound to step 4, training
    # repeats steps 5-7 and goes on to 10 (what Worker.launch builds for a resumed job)
    resumed = [r for r in first if r["step"] <= 4] + [{"step": s, "loss": 2.0 - s / 10} for s in range(5, 11)]
    _metrics(root, resumed)
    worker.report_metrics(job_id, Running(proc=None, last_step=4))
    assert _steps(store, job_id) == [(s, True) for s in range(1, 8)] + [(4, False)] + [(s, True) for s in (8, 9, 10)]
    # a later tick of the same job adds nothing new
    worker.report_metrics(job_id, Running(proc=None, last_step=4))
    assert len(_steps(store, job_id)) == 11
