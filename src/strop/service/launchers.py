"""Where a job's training process runs: on this machine, or on a cluster through its scheduler.

The worker (worker.py) hands each job's command to a launcher and, from
then on, only asks it four things: has it ended (and with which code), ask
it to stop after a checkpoint (a pause, a cancel, a service shutdown), kill
it, and which reference to store for it. Job state stays in the service's
store and the run directory either way; on a cluster that directory must be
on a filesystem the compute nodes share (NFS, Lustre...).

* ``LocalLauncher``: a child process of the service (the default), forked from a process that has
  imported the training stack already (warm.py).
* ``SlurmLauncher``: ``sbatch`` / ``squeue`` / ``scancel``; ``--slurm-option``
  adds sbatch options (partition, GPUs, time limit...). The runner writes its
  exit code to the run directory (runner.EXIT_FILE), so no accounting
  database (sacct) is needed to tell success from failure.

A new scheduler is one more class with ``prepare`` (told when a job is coming), ``start`` and the four questions;
the fake Slurm in tests/service/fake_slurm/ shows how little each call needs.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from ..core.errors import StropError
from . import warm as warm_start

EXIT_FILE = "exit.json"  # {"code": N}, written by the runner as it ends (runner.py)
PROCESS_FILE = "process.json"  # {"pid": N, "start": ticks}, written by the runner as it starts
SCHEDULER_TIMEOUT_S = 60.0
LAUNCHERS = ("local", "slurm")


class Launched(Protocol):
    """One started training process, wherever it runs."""

    ref: str  # stored with the job: a pid, or "slurm:<job id>"

    def poll(self) -> int | None: ...  # the exit code once it has ended, else None
    def stop(self) -> None: ...  # checkpoint after the current step, then exit (SIGTERM)
    def kill(self) -> None: ...
    def close(self) -> None: ...


@dataclass
class LocalProcess:
    proc: subprocess.Popen
    log: IO

    @property
    def ref(self) -> str:
        return str(self.proc.pid)

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.proc.kill()

    def close(self) -> None:
        self.log.close()


@dataclass
class ForkedProcess:
    """A training process forked from the warm forkserver (warm.py): a multiprocessing.Process."""

    proc: object

    def __post_init__(self) -> None:
        self.pid = self.proc.pid  # a closed Process no longer answers

    @property
    def ref(self) -> str:
        return str(self.pid)

    def poll(self) -> int | None:
        return self.proc.exitcode  # negative: the signal that ended it, as Popen reports

    def stop(self) -> None:
        if self.proc.exitcode is None:
            os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        if self.proc.exitcode is None:
            self.proc.kill()

    def close(self) -> None:
        if self.proc.exitcode is not None:
            self.proc.close()


RUNNER = "strop.service.runner"


class LocalLauncher:
    """Children of this machine. The runner command is forked from the warm forkserver (warm.py), which
    has imported the training stack already; any other command, or a platform without forkserver, is a
    plain child process. ``warm=False``: always the plain child."""

    name = "local"

    def __init__(self, warm: bool = True) -> None:
        self.warm = warm and warm_start.available()

    def prepare(self) -> None:
        """A job is coming (the worker is checking its files): start the forkserver's imports now, in the
        background. Not earlier: a service that only serves models never pays for them."""
        if self.warm:
            try:
                warm_start.prepare()
            except Exception as exc:  # the fast path is optional: jobs still start, as plain processes
                self._go_cold(exc)

    def _go_cold(self, exc: Exception) -> None:
        self.warm = False
        print(f"strop service: jobs start as plain processes; the forkserver failed: {exc!r}"[:500], file=sys.stderr)

    def start(self, cmd: list[str], run_dir: Path, env: dict[str, str], job_id: str) -> LocalProcess | ForkedProcess:
        if self.warm and cmd[1:3] == ["-m", RUNNER]:
            try:
                return ForkedProcess(warm_start.start(cmd, run_dir / "train.log", env))
            except Exception as exc:  # as in prepare(): this job and the next start the plain way
                self._go_cold(exc)
        log = (run_dir / "train.log").open("a")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        return LocalProcess(proc, log)


@dataclass
class SlurmJob:
    job_id: str
    run_dir: Path
    launcher: "SlurmLauncher"
    asked_at: float = -1e9  # when squeue was last asked: at most every launcher.poll_s, schedulers are shared

    @property
    def ref(self) -> str:
        return f"slurm:{self.job_id}"

    def poll(self) -> int | None:
        if time.monotonic() - self.asked_at < self.launcher.poll_s:
            return None
        self.asked_at = time.monotonic()
        state = self.launcher.call("squeue", "-h", "-j", self.job_id, "-o", "%T", check=False).strip()
        if state:  # PENDING, RUNNING, COMPLETING, ...: still the scheduler's
            return None
        self.asked_at = -1e9  # ended: every later poll answers at once
        exit_file = self.run_dir / EXIT_FILE
        try:
            return int(json.loads(exit_file.read_text())["code"])
        except (OSError, ValueError, KeyError, TypeError):
            return -signal.SIGKILL  # gone without a word: killed (time limit, node failure, scancel)

    def stop(self) -> None:
        self.launcher.call("scancel", "--signal=TERM", "--full", self.job_id, check=False)

    def kill(self) -> None:
        self.launcher.call("scancel", self.job_id, check=False)

    def close(self) -> None:
        pass


class SlurmLauncher:
    """Each job is one batch job running ``python -m strop.service.runner`` with the service's Python."""

    name = "slurm"

    def __init__(self, options: list[str] | None = None, python: str = sys.executable, poll_s: float = 10.0) -> None:
        self.options, self.python, self.poll_s = list(options or []), python, poll_s

    def call(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> str:
        try:
            done = subprocess.run(list(args), capture_output=True, text=True, timeout=SCHEDULER_TIMEOUT_S, env=env)
        except FileNotFoundError:
            raise StropError(f"--launcher slurm: `{args[0]}` is not on PATH of the service") from None
        except subprocess.TimeoutExpired:
            raise StropError(f"--launcher slurm: `{args[0]}` did not answer in {SCHEDULER_TIMEOUT_S:g} s") from None
        if check and done.returncode != 0:
            raise StropError(f"--launcher slurm: `{' '.join(args[:2])} ...` failed: {done.stderr.strip()[:300]}")
        return done.stdout

    def prepare(self) -> None:
        pass  # each batch job starts its own Python on a compute node

    def start(self, cmd: list[str], run_dir: Path, env: dict[str, str], job_id: str) -> SlurmJob:
        (run_dir / EXIT_FILE).unlink(missing_ok=True)
        script = run_dir / "slurm.sh"
        lines = ["#!/bin/bash", f"#SBATCH --job-name=strop-{job_id}",
                 f"#SBATCH --output={run_dir / 'train.log'}", "#SBATCH --open-mode=append",
                 *(f"#SBATCH {opt}" for opt in self.options),
                 # the scheduler signals the whole job on scancel --signal=TERM --full; exec keeps one process
                 "exec " + shlex.join([self.python if cmd[0] == sys.executable else cmd[0], *cmd[1:]])]
        script.write_text("\n".join(lines) + "\n")
        out = self.call("sbatch", "--parsable", str(script), env=env)
        return SlurmJob(out.strip().split(";")[0], run_dir, self)


def make(name: str, slurm_options: list[str] | None = None, poll_s: float = 10.0):
    """The launcher of ``--launcher NAME``."""
    if name == "local":
        if slurm_options:
            raise StropError("option --slurm-option: needs --launcher slurm")
        return LocalLauncher()
    if name == "slurm":
        if poll_s <= 0:
            raise StropError(f"option --scheduler-poll-s: must be positive, got {poll_s:g}")
        return SlurmLauncher(slurm_options, poll_s=poll_s)
    raise StropError(f"option --launcher: {name!r} is not one of {', '.join(LAUNCHERS)}")


def start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat field 22): with the pid, names one
    process, where a pid alone may have been reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def write_process(run_dir: Path) -> None:
    """The runner's pid and start time (PROCESS_FILE): how a restarted service knows its orphan, whose command
    line is the forkserver's when it was forked (warm.py)."""
    pid = os.getpid()
    try:
        (run_dir / PROCESS_FILE).write_text(json.dumps({"pid": pid, "start": start_ticks(pid)}))
    except OSError:
        pass  # then only the command line can tell (worker._alive)


def is_process(run_dir: Path, pid: int) -> bool:
    """Is ``pid`` the runner that wrote ``run_dir``'s PROCESS_FILE (and not a later process with its pid)?"""
    try:
        known = json.loads((run_dir / PROCESS_FILE).read_text())
    except (OSError, ValueError):
        return False
    return known.get("pid") == pid and known.get("start") is not None and known["start"] == start_ticks(pid)


def write_exit(run_dir: Path, code: int) -> None:
    """The runner's last word, for launchers that cannot see its exit status (runner.py)."""
    try:
        (run_dir / EXIT_FILE).write_text(json.dumps({"code": code, "pid": os.getpid()}))
    except OSError:
        pass
