"""CPU thread sizing for a busy machine (strop/core/threads.py): the choice, the reading of others' load, the override."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from strop.core import threads
from strop.core.errors import StropError

from conftest import strop_cmd


def test_choose_leaves_the_cores_others_use():
    assert threads.choose(2, None) == 2 and threads.choose(2, 0.3) == 2  # a little background work: all cores
    assert threads.choose(2, 0.6) == 1 and threads.choose(2, 1.9) == 1 and threads.choose(2, 5.0) == 1  # never 0
    assert threads.choose(8, 3.2) == 5 and threads.choose(8, 0.0) == 8


def test_load_reads_another_process_and_not_this_one():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        load = threads.Load()
        time.sleep(0.6)
        others = load.others()
    finally:
        busy.kill()
        busy.wait()
    assert others is not None and others > 0.5, others  # the loop held about one core
    load = threads.Load()
    t = time.monotonic()
    while time.monotonic() - t < 0.4:  # this process busy itself: not counted as others
        pass
    mine = load.others()
    assert mine is not None and mine < others


def test_policy_from_environment(monkeypatch):
    monkeypatch.delenv("STROP_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.policy() == "auto"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # what --nproc sets for its ranks, or the user
    assert threads.policy() == "fixed"
    monkeypatch.setenv("STROP_THREADS", "1")
    assert threads.policy() == "1"
    monkeypatch.setenv("STROP_THREADS", "lots")
    with pytest.raises(StropError, match="STROP_THREADS / --threads: 'lots' is not auto, fixed"):
        threads.policy()


def test_a_fixed_count_is_applied_and_recorded(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("STROP_THREADS", "1")
    try:
        sizer = threads.Sizer()
        sizer.step(force=True)  # a number is not re-chosen
        assert torch.get_num_threads() == 1
        rec = sizer.record()
        assert rec["policy"] == "1" and rec["threads"] == 1 and rec["changes"] == 0
    finally:
        torch.set_num_threads(before)


def test_bad_threads_option_is_one_line():
    proc = subprocess.run(strop_cmd("generate", "x", "--prompt", "hi", "--threads", "0"), capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "--threads: '0' is not auto, fixed or a positive number" in proc.stderr


@pytest.mark.slow
def test_training_records_its_threads(tiny_model_dir, chat_file, tmp_path):
    import json

    proc = subprocess.run(strop_cmd("train", "--base-model", str(tiny_model_dir), "--data", str(chat_file),
                                    "--output-dir", str(tmp_path / "run"), "--max-steps", "2", "--val-size", "0",
                                    "--report-to", "none", "--threads", "1"), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["threads"]["policy"] == "1" and summary["threads"]["threads"] == 1
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["cpu"]["thread_policy"] == "1"
