"""samples.jsonl: which examples each step consumed, rewound on resume, with loss spikes named by sample id."""
from __future__ import annotations

import io
import json
from types import SimpleNamespace

import torch

from strop.train.samples import SampleLog, read_rows, rewind

STATE = SimpleNamespace(is_world_process_zero=True, global_step=0)


def _feed(log: SampleLog, losses: list[float]) -> None:
    for step, loss in enumerate(losses, start=1):
        log.record([f"d.jsonl:{2 * step - 1}"], torch.tensor(loss / 2))  # two micro-batches per step
        log.record([f"d.jsonl:{2 * step}"], torch.tensor(loss / 2))
        log.on_step_end(None, SimpleNamespace(is_world_process_zero=True, global_step=step), None)


def test_spike_beyond_factor_of_running_median_is_logged_with_ids(tmp_path):
    err = io.StringIO()
    log = SampleLog(tmp_path / "samples.jsonl", spike_factor=3.0, stream=err)
    _feed(log, [2.0, 2.1, 1.9, 2.0, 2.2, 9.0, 2.0])
    rows = read_rows(tmp_path / "samples.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 8))
    assert rows[5]["ids"] == ["d.jsonl:11", "d.jsonl:12"] and rows[5]["loss"] == 9.0
    assert rows[5]["spike"] == {"median": 2.0, "factor": 3.0}
    assert [s["step"] for s in log.spikes] == [6] and log.spikes[0]["ids"] == ["d.jsonl:11", "d.jsonl:12"]
    assert "loss spike at step 6" in err.getvalue() and "d.jsonl:11" in err.getvalue()


def test_spikes_off_and_too_little_history(tmp_path):
    log = SampleLog(tmp_path / "a.jsonl", spike_factor=0.0, stream=io.StringIO())
    _feed(log, [1.0, 1.0, 1.0, 1.0, 1.0, 50.0])
    early = SampleLog(tmp_path / "b.jsonl", spike_factor=3.0, stream=io.StringIO())
    _feed(early, [1.0, 1.0, 50.0])  # no median yet over so few steps
    assert log.spikes == [] and early.spikes == []


def test_rewind_drops_later_steps_and_a_torn_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps({"step": s, "ids": [str(s)], "loss": 1.0}) + "\n" for s in range(1, 7))
                    + '{"step": 7, "ids": ["7"')  # killed mid-write
    kept = rewind(path, 4)
    assert [r["step"] for r in kept] == [1, 2, 3, 4]
    assert [r["step"] for r in read_rows(path)] == [1, 2, 3, 4]
    resumed = SampleLog(path, spike_factor=3.0, history=kept, stream=io.StringIO())
    assert list(resumed.recent) == [1.0] * 4  # the running median carries over a resume
