"""The job worker: validating_files -> queued -> running -> succeeded | failed | cancelled.

A thread in the service process moves jobs through their states; each
running job trains in a child process (runner.py). Everything a restart
needs is in the store and the run directory, so a service that dies mid-job
resumes it from its newest checkpoint (or starts it over when none was
written yet) instead of losing it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.config import to_yaml
from ..core.errors import StropError
from ..core.rundir import RunDir
from .files import save_result, stored_path, validate
from .jobs import JOB_ID, model_id
from .launchers import Launched, LocalLauncher, SlurmJob, SlurmLauncher, is_process
from .progress import encoded_results
from .store import Store

MAX_RESTARTS = 3  # a job that keeps dying with the service is failed, not retried for ever
STOP_GRACE_S = 30.0


def run_dir(runs_root: Path, job_id: str) -> Path:
    if not JOB_ID.fullmatch(job_id):
        raise StropError(f"job id {job_id!r} is malformed")
    return runs_root / job_id


@dataclass
class Running:
    proc: Launched  # the training process, here or on a cluster (launchers.py)
    last_step: int = 0
    stopping: bool = False
    seen: set = field(default_factory=set)
    synced: bool = False  # the steps an earlier attempt of this job already logged have been read from the store


class Worker(threading.Thread):
    def __init__(self, store: Store, files_root: Path, runs_root: Path, concurrency: int = 1, poll_s: float = 0.5,
                 hooks=None, child_env: dict[str, str] | None = None, launcher=None) -> None:
        super().__init__(name="strop-worker", daemon=True)
        self.launcher = launcher or LocalLauncher()
        self.store, self.files_root, self.runs_root = store, files_root, runs_root
        self.hooks = hooks  # webhooks.Webhooks: told when a job ends
        self.child_env = child_env or {}  # added to each training process's environment
        self.concurrency, self.poll_s = max(1, concurrency), poll_s
        self.running: dict[str, Running] = {}
        self.halt = threading.Event()
        self.wake = threading.Event()

    # -- lifecycle -------------------------------------------------------------
    def run(self) -> None:
        recover(self.store, self.runs_root, self.launcher, self)
        while not self.halt.is_set():
            try:
                self.tick()
            except Exception as exc:  # the worker must outlive one bad job; the job is failed below
                print(f"strop service: worker error: {exc!r}", file=sys.stderr)
            self.wake.wait(self.poll_s)
            self.wake.clear()

    def shutdown(self) -> None:
        """Ask children to checkpoint and stop; their jobs stay 'running' and resume on the next start."""
        self.halt.set()
        self.wake.set()
        for r in self.running.values():
            r.proc.stop()
        deadline = time.monotonic() + STOP_GRACE_S
        for r in self.running.values():
            while r.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            if r.proc.poll() is None:
                r.proc.kill()
            r.proc.close()
        self.join(5)

    def tick(self) -> None:
        while (job := self.store.oldest("validating_files")) is not None:
            self.validate(job)
        for job_id in list(self.running):
            self.watch(job_id)
        while len(self.running) < self.concurrency and (job := self._next_queued()) is not None:
            self.launch(job)

    def _next_queued(self) -> dict | None:
        """The oldest queued job whose training process is not still stopping (a pause resumed at once)."""
        return next((j for j in reversed(self.store.list_jobs(statuses=("queued",))) if j["id"] not in self.running),
                    None)

    # -- states ----------------------------------------------------------------
    def validate(self, job: dict) -> None:
        self.launcher.prepare()  # a warm launcher imports the training stack while the files are checked
        try:
            for key in ("training_file", "validation_file"):
                if job[key] is None:
                    continue
                row = self.store.get_file(job[key])
                if row is None:
                    raise StropError(f"{key} {job[key]} was deleted before the job started")
                validate(stored_path(self.files_root, row["id"], row["filename"]), row["filename"])
        except StropError as exc:
            self.fail(job["id"], "invalid_training_file", str(exc))
            return
        if self.store.set_status(job["id"], "queued", only_from=("validating_files",)):
            self.store.add_event(job["id"], "Files validated, moving job to queued state")

    def launch(self, job: dict) -> None:
        root = run_dir(self.runs_root, job["id"])
        root.mkdir(parents=True, exist_ok=True)
        (root / "error.json").unlink(missing_ok=True)
        cfg = _config(job)
        (root / "job.yaml").write_text(to_yaml(cfg))
        cmd = [sys.executable, "-m", "strop.service.runner", str(root)] + (["--resume"] if job["resume"] else [])
        try:
            proc = self.launcher.start(cmd, root, {**os.environ, **self.child_env, "PYTHONUNBUFFERED": "1"}, job["id"])
        except StropError as exc:  # the scheduler refused the job: say why, keep the service up
            self.fail(job["id"], "launch_failed", str(exc))
            return
        if not self.store.set_status(job["id"], "running", only_from=("queued",), pid=_pid(proc.ref),
                                     handle=proc.ref, started_at=job.get("started_at") or int(time.time())):
            proc.kill()  # cancelled between the read and the start
            proc.close()
            return
        start_step = _checkpoint_step(RunDir(root)) if job["resume"] else 0
        self.running[job["id"]] = Running(proc, last_step=start_step)
        self.store.add_event(job["id"], "Fine-tuning job started" if not job["resume"]
                             else f"Fine-tuning job resumed from step {start_step}")

    def watch(self, job_id: str) -> None:
        r = self.running[job_id]
        job = self.store.get_job(job_id)
        self.report_metrics(job_id, r)
        if job["status"] in ("cancelled", "paused") and not r.stopping and r.proc.poll() is None:
            r.stopping = True
            r.proc.stop()  # checkpoint after this step, then exit
        elif job["status"] == "queued" and not r.stopping and r.proc.poll() is None:
            self.store.set_status(job_id, "running", only_from=("queued",))  # resumed before the pause took hold
        code = r.proc.poll()
        if code is None:
            return
        r.proc.close()
        del self.running[job_id]
        self.report_metrics(job_id, r)
        self.finish(job, code)

    def report_metrics(self, job_id: str, r: Running) -> None:
        root = run_dir(self.runs_root, job_id)
        try:
            rows = RunDir(root).read_metrics()
        except ValueError:  # a row half-written this instant; read it next tick
            return
        if not r.synced:  # a resumed job repeats the steps after its checkpoint; they are logged already
            r.synced = True
            for kind, step in _logged_steps(self.store, job_id):
                if kind == "train":
                    r.last_step = max(r.last_step, step)
                else:
                    r.seen.add(("eval", step))
        for row in rows:
            step, total = row.get("step", 0), row.get("max_steps")
            shown = f"Step {step}/{total}" if total else f"Step {step}"
            if "loss" in row and step > r.last_step:
                r.last_step = step
                data = {"step": step, "train_loss": row["loss"], "total_steps": total, "epoch": row.get("epoch")}
                if "mean_token_accuracy" in row:
                    data["train_mean_token_accuracy"] = row["mean_token_accuracy"]
                self.store.add_event(job_id, f"{shown}: training loss={row['loss']:.4f}", type="metrics", data=data)
            elif "eval_loss" in row and ("eval", step) not in r.seen:
                r.seen.add(("eval", step))
                data = {"step": step, "valid_loss": row["eval_loss"], "total_steps": total, "epoch": row.get("epoch")}
                if "eval_mean_token_accuracy" in row:
                    data["valid_mean_token_accuracy"] = row["eval_mean_token_accuracy"]
                self.store.add_event(job_id, f"{shown}: validation loss={row['eval_loss']:.4f}", type="metrics",
                                     data=data)

    def finish(self, job: dict, code: int) -> None:
        root = RunDir(run_dir(self.runs_root, job["id"]))
        if job["status"] == "cancelled":
            self.store.add_event(job["id"], "Job cancelled; training stopped")
            return
        if job["status"] in ("paused", "queued") and not (code == 0 and root.summary.is_file()):
            # paused (and maybe resumed already, then queued): the next launch goes on from the sealed checkpoint
            step = _checkpoint_step(root)
            self.store.update_job(job["id"], pid=None, resume=1 if step else 0)
            self.store.add_event(job["id"], f"Fine-tuning job paused at step {step}" if step else
                                 "Fine-tuning job paused before its first checkpoint; it will start again on resume")
            return
        if code == 0 and root.summary.is_file():
            self.succeed(job, root)
            return
        self.fail(job["id"], "training_failed", _failure_reason(root.root, code))

    def succeed(self, job: dict, root: RunDir) -> None:
        summary = json.loads(root.summary.read_text())
        model = model_id(job)
        results = save_result(self.store, self.files_root, "step_metrics.csv", encoded_results(root.read_metrics()))
        if self.store.set_status(job["id"], "succeeded", only_from=("running", "paused", "queued"), fine_tuned_model=model,
                                 trained_tokens=summary.get("tokens_seen"), pid=None, result_files=[results["id"]]):
            self.store.add_event(job["id"], f"New fine-tuned model created: {model}")
            self.store.add_event(job["id"], "The job has successfully completed")
            self.announce(job["id"], "succeeded")

    def fail(self, job_id: str, code: str, message: str) -> None:
        if self.store.set_status(job_id, "failed", error={"code": code, "message": message, "param": None}, pid=None):
            self.store.add_event(job_id, f"Fine-tuning job failed: {message}", level="error")
            self.announce(job_id, "failed")

    def announce(self, job_id: str, status: str) -> None:
        if self.hooks is not None:
            from .webhooks import EVENT_FOR_STATUS

            self.hooks.emit(EVENT_FOR_STATUS[status], job_id)


def _config(job: dict):
    from ..core.config import TrainConfig, build

    return build(TrainConfig, job["options"], origin=f"job {job['id']}")


def _logged_steps(store: Store, job_id: str) -> list[tuple[str, int]]:
    """("train" | "eval", step) of every metrics event already in the job's log."""
    found, after = [], None
    while page := store.events(job_id, after=after, limit=500):
        for e in page:
            if e["type"] == "metrics" and e["data"] and "step" in e["data"]:
                found.append(("train" if "train_loss" in e["data"] else "eval", int(e["data"]["step"])))
        after = page[-1]["id"]
    return found


def _checkpoint_step(run: RunDir) -> int:
    ckpt = run.latest_checkpoint()
    return int(ckpt.name.rsplit("-", 1)[1]) if ckpt else 0


def _failure_reason(root: Path, code: int) -> str:
    err = root / "error.json"
    if err.is_file():
        return json.loads(err.read_text())["message"]
    log = root / "train.log"
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
    return f"training exited with code {code}" + (f": {tail[0][:500]}" if tail else "")


def _pid(ref: str) -> int | None:
    """The local process id in a launcher's reference (None for a cluster job)."""
    return int(ref) if ref.isdigit() else None


def _alive(pid: int | None, job_id: str, root: Path) -> bool:
    """Is ``pid`` still our child for this job (and not a recycled pid)? Its command line names the job, or,
    forked from the warm forkserver (warm.py), it is the process the run directory records."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return (job_id.encode() in cmdline and b"strop.service.runner" in cmdline) or is_process(root, pid)


def recover(store: Store, runs_root: Path, launcher=None, worker: "Worker | None" = None) -> None:
    """Jobs left 'running' by a service that stopped: finish, resume or restart each one (``worker``
    finishes the ones that ended meanwhile as it finishes any job: result file, events, webhooks)."""
    for job in store.list_jobs(statuses=("running",)):
        job_id, root = job["id"], RunDir(run_dir(runs_root, job["id"]))
        if _alive(job["pid"], job_id, root.root):
            os.kill(job["pid"], signal.SIGTERM)  # the orphan saves a checkpoint; we resume from it below
            _wait_gone(job["pid"], job_id, root.root)
        elif (job.get("handle") or "").startswith("slurm:") and isinstance(launcher, SlurmLauncher):
            _stop_batch_job(SlurmJob(job["handle"].split(":", 1)[1], root.root, launcher))
        if root.summary.is_file() and root.final.is_dir():
            store.add_event(job_id, "The job had completed when the service stopped")
            if worker is not None:
                worker.succeed(job, root)
            else:
                summary = json.loads(root.summary.read_text())
                store.set_status(job_id, "succeeded", fine_tuned_model=model_id(job),
                                 trained_tokens=summary.get("tokens_seen"))
            continue
        if job["restarts"] >= MAX_RESTARTS:
            message = f"the service stopped during this job {job['restarts'] + 1} times; giving up"
            if worker is not None:
                worker.fail(job_id, "service_restarted", message)
            else:
                store.set_status(job_id, "failed", error={"code": "service_restarted", "param": None, "message": message})
            continue
        step = _checkpoint_step(root)
        if not step:  # nothing to resume from: start over in a clean directory
            for part in (root.checkpoints, root.metrics, root.final):
                shutil.rmtree(part, ignore_errors=True) if part.is_dir() else part.unlink(missing_ok=True)
        store.set_status(job_id, "queued", resume=1 if step else 0, restarts=job["restarts"] + 1, pid=None)
        store.add_event(job_id, f"The service restarted during training; resuming from step {step}" if step
                        else "The service restarted before a checkpoint was written; starting the job again")


def _stop_batch_job(batch, timeout_s: float = STOP_GRACE_S) -> None:
    """A cluster job that outlived the service: checkpoint and stop it, so it resumes like a local one."""
    if batch.poll() is not None:
        return
    batch.stop()
    deadline = time.monotonic() + timeout_s
    while batch.poll() is None and time.monotonic() < deadline:
        time.sleep(1.0)
    if batch.poll() is None:
        batch.kill()


def _wait_gone(pid: int, job_id: str, root: Path, timeout_s: float = STOP_GRACE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while _alive(pid, job_id, root) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid, job_id, root):
        os.kill(pid, signal.SIGKILL)
