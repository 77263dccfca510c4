"""Training processes forked from a process that has imported the training stack already.

A job's training runs in a process of its own (runner.py), so a cancel or a crash in torch cannot take the
service down. Started with ``python -m strop.service.runner``, each such process spends about 5 s of CPU
importing torch, transformers, peft and trl before it reads its first row (measured on the project's
2-core CPU; BENCHMARKS.md). Python's ``forkserver`` start method keeps one process that has done those
imports, started when the service's first job is being checked (launchers.LocalLauncher.prepare) and idle
between jobs; each job is a fork of it, which has the
modules already and starts training at once. It is still a process of its own: the job's environment,
working directory and log are its own, a cancel is still SIGTERM to it, a kill still SIGKILL.

Why not plain ``fork`` of the service: the service has threads (uvicorn, the worker, webhooks) and has
run torch (chat through served checkpoints), and forking a threaded process, or one whose OpenMP pool has
started, can deadlock the child. The forkserver process runs no Python thread and no torch op (the native
threads torch and pyarrow start at import sit idle, as in the processes PyTorch's DataLoader forks), and it
never initialises CUDA (bitsandbytes, which would, stays unimported there: patches/bnb_import.py). A child
that finds CUDA initialised anyway (``torch.cuda._is_in_bad_fork``) replaces itself with the plain
``python -m strop.service.runner`` command, so a job never trains in a broken fork.

Where the start method is missing (not Linux, or Python built without it), the launcher starts the plain
command as before (launchers.py).
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

PRELOAD = "strop.service.preload"  # the module the forkserver imports once (preload.py)
_started = False


def available() -> bool:
    return "forkserver" in multiprocessing.get_all_start_methods()


def _context():
    global _started
    ctx = multiprocessing.get_context("forkserver")
    if not _started:
        ctx.set_forkserver_preload([PRELOAD])
        _started = True
    return ctx


def prepare() -> None:
    """Start the forkserver and its imports now, in the background, so the first job does not wait for them."""
    if available():
        _context()
        from multiprocessing import forkserver

        forkserver.ensure_running()


def start(cmd: list[str], log_path: Path, env: dict[str, str]):
    """A started ``multiprocessing.Process`` running the runner with ``cmd``'s arguments (``cmd`` is the plain
    command, ``[python, "-m", "strop.service.runner", RUN_DIR, ...]``, used only if the fork is unusable)."""
    proc = _context().Process(target=_child, args=(cmd, str(log_path), dict(env), os.getcwd()),
                              name=f"strop-job-{Path(cmd[3]).name}", daemon=False)
    proc.start()
    # a plain child outlives a service that exits without stopping it (runner.py then checkpoints it);
    # multiprocessing would instead join every child it tracks when the service exits
    multiprocessing.process._children.discard(proc)
    return proc


def _child(cmd: list[str], log_path: str, env: dict[str, str], cwd: str) -> None:
    """In the forked process: become the job's process (environment, directory, log), then run the runner."""
    from multiprocessing import forkserver

    # each fork holds a copy of the pipe whose end tells the forkserver its service is gone; let go of it,
    # so the forkserver ends with the service and this job sees its parent change and checkpoints (runner.py)
    server = forkserver._forkserver
    if server._forkserver_alive_fd is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's own streams
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    import torch

    if torch.cuda._is_in_bad_fork():  # CUDA was initialised before the fork: train in a fresh process instead
        os.execve(cmd[0], cmd, env)
    code = 1
    try:
        from . import runner

        code = runner.main(cmd[3:])
    except SystemExit as exc:  # a signal's exit (SIGTERM: checkpointed, then stopped) keeps its code
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # the plain command would print the traceback to the log and exit 1: so does this
        import traceback

        traceback.print_exc()
    finally:
        import atexit

        atexit._run_exitfuncs()  # multiprocessing ends a child with os._exit, which skips them
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
