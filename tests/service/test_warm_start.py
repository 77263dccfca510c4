"""Jobs forked from the warm forkserver (src/strop/service/warm.py): each still a process of its own, with the
job's environment, working directory and log, stopped by SIGTERM as before, and known to a restarted
service by its run directory (its command line is the forkserver's). Where the fork is unusable, the plain
command runs instead."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from strop.core.config import to_yaml
from strop.core.rundir import RunDir
from strop.methods.options import load_train_config
from strop.service.launchers import ForkedProcess, LocalLauncher, LocalProcess
from strop.service.worker import _alive

pytestmark = pytest.mark.slow  # trainings in child processes

ROWS = "".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                        {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}) + "\n"
               for i in range(12))


def _job(run: Path, model: Path, data: str, **extra) -> list[str]:
    run.mkdir(parents=True)
    values = {"base_model": str(model), "data": data, "output_dir": str(run), "report_to": "none", "preserve": "none",
              "val_size": "0", **{k: str(v) for k, v in extra.items()}}
    (run / "job.yaml").write_text(to_yaml(load_train_config(None, values)))
    return [sys.executable, "-m", "strop.service.runner", str(run)]


def _wait(proc, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.05)
    return proc.poll()


@pytest.fixture(scope="module")
def launcher():
    launcher = LocalLauncher()
    if not launcher.warm:
        pytest.skip("this platform has no forkserver start method; jobs start as plain processes")
    return launcher


def test_a_forked_job_has_the_jobs_environment_directory_and_log(launcher, tiny_model_dir, tmp_path, monkeypatch):
    (tmp_path / "train.jsonl").write_text(ROWS)
    monkeypatch.chdir(tmp_path)  # the job's relative data path must resolve here, not in the forkserver's directory
    run = tmp_path / "run"
    cmd = _job(run, tiny_model_dir, "train.jsonl", max_steps=2)
    proc = launcher.start(cmd, run, {**os.environ, "PYTHONUNBUFFERED": "1", "STROP_THREADS": "1"}, "job-a")
    assert isinstance(proc, ForkedProcess)
    assert _wait(proc) == 0, (run / "train.log").read_text()[-2000:]
    proc.close()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2
    assert summary["threads"]["policy"] == "1", summary["threads"]  # the job's environment, not the forkserver's
    assert json.loads((run / "process.json").read_text())["pid"] == int(proc.ref)
    # a job that fails says why in its own log, with the runner's exit code
    bad = tmp_path / "bad"
    proc = launcher.start(_job(bad, tiny_model_dir, "missing.jsonl"), bad, dict(os.environ), "job-a2")
    assert _wait(proc) not in (0, None)
    proc.close()
    assert "strop: " in (bad / "train.log").read_text() and "missing.jsonl" in (bad / "train.log").read_text()
    assert not (run / "train.log").is_file() or "missing.jsonl" not in (run / "train.log").read_text()


def test_a_forked_job_stops_on_sigterm_and_a_restarted_service_knows_it(launcher, tiny_model_dir, chat_file, tmp_path):
    run = tmp_path / "long"
    cmd = _job(run, tiny_model_dir, str(chat_file), max_steps=400, save_steps=1000)
    proc = launcher.start(cmd, run, {**os.environ, "PYTHONUNBUFFERED": "1", "STROP_THREADS": "1"}, "job-b")
    pid = int(proc.ref)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.stat().st_size > 0):
        assert time.monotonic() < deadline and proc.poll() is None, (run / "train.log").read_text()[-2000:]
        time.sleep(0.05)
    # a fork of the forkserver: not this process's child, and its command line does not name the job ...
    stat = Path(f"/proc/{pid}/stat").read_text()
    assert int(stat.rsplit(")", 1)[1].split()[1]) != os.getpid()
    assert b"strop.service.runner" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    # ... so a restarted service knows its orphan by the run directory's record of pid and start time
    assert _alive(pid, "job-b", run)
    other = tmp_path / "other"
    other.mkdir()
    assert not _alive(pid, "job-b", other)
    proc.stop()  # the pause / cancel / shutdown signal: checkpoint after this step, then exit
    assert _wait(proc) == 143
    proc.close()
    ckpt = RunDir(run).latest_checkpoint()
    assert ckpt is not None and 1 <= json.loads((ckpt / "trainer_state.json").read_text())["global_step"] < 400
    assert not _alive(pid, "job-b", run)


def test_other_commands_and_warm_false_start_plain_processes(launcher, tmp_path):
    cmd = [sys.executable, "-c", "import sys; print('plain', sys.argv[1:])", "x"]
    for which in (launcher, LocalLauncher(warm=False)):
        proc = which.start(cmd, tmp_path, dict(os.environ), "job-c")
        assert isinstance(proc, LocalProcess)
        assert _wait(proc) == 0
        proc.close()
    assert (tmp_path / "train.log").read_text().count("plain ['x']") == 2


def test_a_forkserver_that_cannot_start_leaves_plain_processes(tmp_path, monkeypatch, capsys):
    from strop.service import launchers, warm

    def broken(*_a, **_k):
        raise OSError("no room for the forkserver's socket")

    started = []
    monkeypatch.setattr(warm, "start", broken)
    monkeypatch.setattr(launchers.subprocess, "Popen", lambda cmd, **kw: started.append(cmd) or "popen")
    launcher = LocalLauncher()
    if not launcher.warm:
        pytest.skip("this platform has no forkserver start method")
    cmd = [sys.executable, "-m", "strop.service.runner", str(tmp_path)]
    proc = launcher.start(cmd, tmp_path, dict(os.environ), "job-e")
    assert isinstance(proc, LocalProcess) and started == [cmd] and not launcher.warm
    assert "jobs start as plain processes" in capsys.readouterr().err
    proc.close()


def test_a_fork_made_after_cuda_started_replaces_itself_with_the_plain_command(tmp_path):
    """torch marks a fork of a process that had initialised CUDA; such a child must not train: it execs the
    plain command, in the same process (same pid), with the job's environment and log."""
    log = tmp_path / "train.log"
    script = f"""
import os, sys, torch
torch.cuda._is_in_bad_fork = lambda: True
from strop.service import warm
plain = [sys.executable, "-c", "import os, sys; print('plain', os.getpid(), os.environ['JOB_MARK']); sys.exit(7)"]
print('forked', os.getpid(), flush=True)
warm._child(plain + ['unused-run-dir'], {str(log)!r}, {{**os.environ, 'JOB_MARK': 'mine'}}, os.getcwd())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 7, done.stderr[-2000:]
    pid = done.stdout.split()[1]
    assert log.read_text().split() == ["plain", pid, "mine"]


def test_a_forked_job_checkpoints_and_stops_when_its_service_is_killed(tiny_model_dir, chat_file, tmp_path):
    """A killed service leaves no job training unwatched: the forkserver ends with it, the job sees its parent
    change and stops after a checkpoint, which the restarted service resumes from (worker.recover)."""
    run = tmp_path / "orphan"
    cmd = _job(run, tiny_model_dir, str(chat_file), max_steps=2000, save_steps=1000)
    service = f"""
import os, sys, time
from pathlib import Path
from strop.service.launchers import LocalLauncher
if __name__ == "__main__":
    proc = LocalLauncher().start({cmd!r}, Path({str(run)!r}), {{**os.environ, "STROP_THREADS": "1"}}, "job-d")
    print(proc.ref, flush=True)
    time.sleep(600)
"""
    (tmp_path / "service.py").write_text(service)
    svc = subprocess.Popen([sys.executable, str(tmp_path / "service.py")], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(svc.stdout.readline())
        metrics = run / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (metrics.is_file() and metrics.stat().st_size > 0):
            assert time.monotonic() < deadline, (run / "train.log").read_text()[-2000:]
            time.sleep(0.05)
    finally:
        svc.kill()
        svc.wait()
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and b"(Z)" not in Path(f"/proc/{pid}/stat").read_bytes()[:64]:
        assert time.monotonic() < deadline, "the job kept training after its service was killed"
        time.sleep(0.1)
    ckpt = RunDir(run).latest_checkpoint()
    assert ckpt is not None and json.loads((ckpt / "trainer_state.json").read_text())["global_step"] < 2000
    assert not (run / "summary.json").is_file()
