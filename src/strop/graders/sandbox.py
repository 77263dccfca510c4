"""Run a client's python grader where it can harm nothing: namespaces, a read-only view, no network, limits.

A python grader (OpenAI's ``{"type": "python", "source": ...}``) is code from
whoever submits a job, so it never runs in the service's process. Each call
starts a fresh ``python -I -S`` interpreter with an empty environment, which
puts itself in new user, mount, network, PID, IPC and UTS namespaces
(``unshare(2)``, allowed without root where unprivileged user namespaces
are on) and forks the grader as PID 1 of the new PID namespace. Before any
client code runs, that process:

* remounts every mount read-only and lays an empty read-only tmpfs over the
  directories the caller hides (the service's workdir) and over /home, /root,
  /tmp, /var/tmp, /run, /dev/shm and /proc; the interpreter's own library
  directory is bound back read-only, so ``import json`` still works when
  Python lives under /root or /home. Its working directory is the empty /tmp;
* sees only a network namespace whose one interface (loopback) is down;
* sets rlimits: CPU seconds, address space, processes, open files, file size 0;
* gives up every capability (bounding set, ambient set, ``no_new_privs``) and
  the right to make user namespaces (``max_user_namespaces`` 0 inside), so it
  cannot unmount a hiding tmpfs or make a mount writable again.

RLIMIT_NPROC is counted per user, and the kernel exempts host root from it,
so when the service runs as root the launcher steps into the interpreter's
library directory, then becomes ``nobody`` (``SANDBOX_UID``) before it
makes the namespaces. The parent enforces a wall-clock deadline and then kills
the process group; the grader being PID 1 of its namespace, the kernel kills
every process left in the namespace when it dies, so nothing outlives a call.

Input goes in on stdin as JSON; the result comes back on stdout as one JSON
line, read up to ``Limits.output_bytes``. ``available()`` runs a probe grader
once and says why the sandbox cannot start; python graders are then refused.
Nothing here ever falls back to running code unsandboxed.

This file is also the program the sandboxed interpreter runs (``-c`` with
this module's text), so it imports only the standard library.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import math
import os
import re
import resource
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

MARKER = "strop-grader-sandbox"  # in every sandbox process's argv, so tests can look for strays
SANDBOX_UID = 65534  # nobody: the user a root service runs graders as, since RLIMIT_NPROC skips root
# /dev/shm: a service's shared memory (torch's tensors, multiprocessing). /proc last: hiding binds from it.
ALWAYS_HIDDEN = ("/home", "/root", "/tmp", "/var/tmp", "/run", "/dev/shm", "/proc")
EXIT_SETUP = 125  # the launcher or PID 1 could not build the sandbox; stdout says why
ERROR_CHARS = 500
STDERR_BYTES = 8192
DRAIN_SECONDS = 2.0  # after a kill, how long to wait for the namespace's processes to let go of the pipes

# Linux constants (include/uapi/linux/sched.h, mount.h, prctl.h, capability.h).
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
# A read-only bind remount must repeat the flags the kernel locked on mounts inherited from the host.
LOCKED_FLAGS = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC,
                os.ST_NOATIME: MS_NOATIME, os.ST_NODIRATIME: MS_NODIRATIME, os.ST_RELATIME: MS_RELATIME}

PROBE = '''
import errno, os, socket
def grade(sample, item):
    try:
        open("probe", "w")
        return -1.0
    except OSError as exc:
        if exc.errno != errno.EROFS:
            return -2.0
    try:
        socket.create_connection(("127.0.0.1", 9), timeout=1)
        return -3.0
    except OSError as exc:
        if exc.errno != errno.ENETUNREACH:  # not merely refused: there is no network at all
            return -4.0
    return sample["x"] + item["y"] if not os.listdir("/proc") else -5.0
'''  # its result is x + y only inside a working sandbox


@dataclass(frozen=True)
class Limits:
    """What one grader call may use. Memory and CPU are per process; processes counts them all."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_bytes: int = 512 * 2**20
    processes: int = 8  # the launcher and PID 1 count too
    open_files: int = 32
    output_bytes: int = 64 * 1024


@dataclass(frozen=True)
class Outcome:
    """A grader call's result: ``score`` when it returned a number, else ``kind`` and a one-line ``error``.

    kind: ``runtime`` (the grader's code raised, or returned no number), ``timeout``,
    ``cpu_limit``, ``killed`` (another signal), ``output_limit``, ``sandbox`` (it could
    not be built) or ``unavailable`` (namespaces refused on this machine).
    """

    score: float | None
    kind: str | None = None
    error: str | None = None
    seconds: float = 0.0


# ---------------------------------------------------------------- the service's side


@functools.lru_cache(maxsize=1)
def available() -> tuple[bool, str]:
    """Whether sandboxed graders run here: a probe grader must score right and see no files, /proc or network."""
    if not sys.platform.startswith("linux"):
        return False, f"the grader sandbox needs Linux namespaces; this is {sys.platform}"
    outcome = _execute(PROBE, {"x": 0.5}, {"y": 0.25}, Limits(wall_seconds=20), ())
    if outcome.score == 0.75:
        return True, "user, mount, network and PID namespaces with rlimits"
    return False, f"the grader sandbox does not work on this machine: {outcome.error or outcome.score}"


def run(source: str, sample: dict, item: dict, *, limits: Limits | None = None,
        hide: Sequence[str | os.PathLike] = ()) -> Outcome:
    """Call ``grade(sample, item)`` from ``source`` in a fresh sandbox; never raises for the grader's faults.

    ``hide``: directories (the service's workdir) the grader must not see, on top of ALWAYS_HIDDEN.
    """
    ok, reason = available()
    if not ok:
        return Outcome(None, "unavailable", reason)
    return _execute(source, sample, item, limits or Limits(), hide)


def _execute(source: str, sample: dict, item: dict, limits: Limits, hide: Sequence[str | os.PathLike]) -> Outcome:
    start = time.monotonic()
    deadline = start + limits.wall_seconds
    config = {"parent": os.getpid(), "limits": asdict(limits),
              "hide": [os.path.realpath(p) for p in hide if os.path.isdir(p)]}
    payload = json.dumps({"source": source, "sample": sample, "item": item}, default=str).encode()
    try:
        proc = _spawn()
    except OSError as exc:  # no interpreter to exec, no process left under the host's limits
        return Outcome(None, "sandbox", f"cannot start the sandbox: {exc}")
    finished = False
    try:
        _send(proc, json.dumps(config).encode() + b"\n" + payload)
        out, err, stopped = _collect(proc, deadline, limits.output_bytes)
        finished = stopped is None
    finally:  # also on an exception here, so no sandbox outlives the call
        code = _stop(proc, deadline if finished else 0.0)
    return _outcome(out, err, stopped, code, limits, time.monotonic() - start)


def _spawn() -> subprocess.Popen:
    argv = [sys.executable, "-I", "-S", "-c", _program(), MARKER]
    # A new session gives the parent one process group to kill.
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={}, cwd="/", start_new_session=True, close_fds=True)


@functools.lru_cache(maxsize=1)
def _program() -> str:
    return Path(__file__).read_text(encoding="utf-8")


def _send(proc: subprocess.Popen, data: bytes) -> None:
    # The launcher reads all of stdin before anything else runs, so this cannot wait on client code.
    try:
        proc.stdin.write(data)
        proc.stdin.flush()
    except BrokenPipeError:  # it died at start; _outcome reports its stderr
        pass
    finally:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()


def _collect(proc: subprocess.Popen, deadline: float, limit: int) -> tuple[bytes, bytes, str | None]:
    """Read stdout and stderr until both close (None), the deadline passes ("timeout") or stdout outgrows
    ``limit`` ("output"). poll, not select: a busy service may hold fds past select's 1024."""
    out, err = proc.stdout.fileno(), proc.stderr.fileno()
    caps, bufs = {out: limit, err: STDERR_BYTES}, {out: bytearray(), err: bytearray()}
    poller = select.poll()
    for fd in caps:
        poller.register(fd, select.POLLIN)
    open_fds, stopped = set(caps), None
    while open_fds and stopped is None:
        left = deadline - time.monotonic()
        ready = poller.poll(left * 1000) if left > 0 else []
        stopped = None if ready else "timeout"
        for fd, _ in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                poller.unregister(fd)
                open_fds.discard(fd)
            elif fd == out and len(bufs[out]) + len(chunk) > limit:
                stopped = "output"
            else:
                bufs[fd] += chunk[: caps[fd] - len(bufs[fd])]  # stderr is only a hint: keep its head
    return bytes(bufs[out]), bytes(bufs[err]), stopped


def _stop(proc: subprocess.Popen, deadline: float) -> int:
    """Let the launcher exit until ``deadline``, kill whatever is left, wait until it is gone, reap the launcher."""
    while time.monotonic() < deadline and not os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
        time.sleep(0.005)
    # Unreaped, the launcher keeps its pid (the group id), so this cannot hit a stranger's group.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _drain(proc)
    return proc.wait()


def _drain(proc: subprocess.Popen) -> None:
    """Every sandbox process holds stdout; its end of file means the last of them has exited."""
    end = time.monotonic() + DRAIN_SECONDS
    poller = select.poll()
    poller.register(proc.stdout.fileno(), select.POLLIN)
    while (left := end - time.monotonic()) > 0 and poller.poll(left * 1000):
        if not os.read(proc.stdout.fileno(), 65536):
            break
    proc.stdout.close()
    proc.stderr.close()


def _outcome(out: bytes, err: bytes, stopped: str | None, code: int, limits: Limits, seconds: float) -> Outcome:
    if stopped == "timeout":
        return Outcome(None, "timeout", f"the grader ran longer than {limits.wall_seconds:g} s and was stopped",
                       seconds)
    if stopped == "output":
        return Outcome(None, "output_limit", f"the grader wrote more than {limits.output_bytes} bytes", seconds)
    report = _last_json_line(out)
    if "score" in report:
        return Outcome(float(report["score"]), None, None, seconds)
    if "error" in report:
        return Outcome(None, "runtime", str(report["error"])[:ERROR_CHARS], seconds)
    if "sandbox" in report:
        return Outcome(None, "sandbox", str(report["sandbox"])[:ERROR_CHARS], seconds)
    if code == 128 + signal.SIGXCPU:
        return Outcome(None, "cpu_limit", f"the grader used more than {limits.cpu_seconds} s of CPU", seconds)
    if code > 128:
        return Outcome(None, "killed", f"the grader was killed by {signal.Signals(code - 128).name}", seconds)
    tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
    return Outcome(None, "sandbox", f"the sandbox exited with status {code} and no result ({tail[0]})"[:ERROR_CHARS],
                   seconds)


def _last_json_line(out: bytes) -> dict:
    for line in reversed(out.splitlines()):
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict):
            return report
    return {}


# ---------------------------------------------------------------- inside the sandbox


def _launcher() -> None:
    """The fresh interpreter: read the job, enter new namespaces, fork the grader as their PID 1, pass on its status."""
    config = json.loads(sys.stdin.buffer.readline())
    payload = sys.stdin.buffer.read()
    libc = _libc()
    # The interpreter's libraries must stay importable under a hidden /root or /home. Once we are nobody we
    # may not reach them by path, and an fd opened now would point into the host's mount namespace, where a
    # bind cannot take its source; the cwd, though, moves into the new namespace with unshare().
    keep = os.path.commonpath([p for p in sys.path if os.path.exists(p)])
    os.chdir(keep)
    if os.geteuid() == 0:
        _become(libc, SANDBOX_UID)
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")  # after _become: it clears it
    if os.getppid() != config["parent"]:  # the service went away before the line above armed the signal
        os._exit(EXIT_SETUP)
    try:
        _enter_namespaces(libc)
    except OSError as exc:
        _fail(f"cannot create namespaces ({exc})")
    pid = os.fork()
    if pid == 0:
        _init(libc, config, payload, keep)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    os._exit(code if code >= 0 else 128 - code)


def _become(libc, uid: int) -> None:
    """Give up root for ``uid``: RLIMIT_NPROC never applies to host root, so a fork bomb would go unchecked."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    # The uid change made /proc/self/* root's; the launcher must still write its own uid_map.
    _check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(DUMPABLE)")


def _enter_namespaces(libc) -> None:
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    _check(libc.unshare(flags), "unshare")
    _write("/proc/self/setgroups", "deny")  # required before an unprivileged gid_map
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")


def _init(libc, config: dict, payload: bytes, keep: str) -> None:
    """PID 1 of the sandbox: lock everything down, then run the grader and report one JSON line."""
    out = _quiet_stdio()
    try:
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
        _lock_filesystem(libc, config["hide"], keep)
        _set_limits(config["limits"])
        _drop_privileges(libc)
    except (OSError, ValueError) as exc:  # ValueError: setrlimit above a hard limit the host set lower
        _fail(f"cannot set up the sandbox ({exc})", out)
    os.write(out, json.dumps(_grade(payload)).encode() + b"\n")
    os._exit(0)


def _quiet_stdio() -> int:
    """Point fds 1 and 2 at /dev/null so a grader's prints cannot mix with the report; return the report's fd."""
    out = os.dup(1)
    null = os.open("/dev/null", os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    return out


def _lock_filesystem(libc, hide: list[str], keep: str) -> None:
    """Everything read-only, the hidden directories empty, cwd the empty /tmp; ``keep`` (the interpreter's
    libraries, the cwd on entry) is bound back where a hidden directory covers it."""
    _write("/proc/sys/user/max_user_namespaces", "0")  # this namespace's own limit: no nested ones
    kept = os.open(".", os.O_PATH | os.O_DIRECTORY)
    for mount_point in _mount_points():
        try:
            _remount_readonly(libc, mount_point)
        except (FileNotFoundError, PermissionError):  # out of our reach, so out of the grader's too
            continue
    for path in dict.fromkeys(os.path.realpath(p) for p in (*hide, *ALWAYS_HIDDEN)):
        if os.path.isdir(path):
            _hide(libc, path, keep, kept)
    os.close(kept)
    os.chdir("/tmp")


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo", "rb") as f:
        points = [os.fsdecode(line.split()[4]) for line in f]
    return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), p) for p in points]  # \040 is a space


def _remount_readonly(libc, path: str) -> None:
    flags = os.statvfs(path).f_flag
    locked = sum(ms for st, ms in LOCKED_FLAGS.items() if flags & st)
    _check(libc.mount(None, os.fsencode(path), None, MS_BIND | MS_REMOUNT | MS_RDONLY | locked, None),
           f"remount {path} read-only")


def _hide(libc, path: str, keep: str, kept: int) -> None:
    """An empty read-only tmpfs over ``path``; ``keep`` (open as fd ``kept``) bound back if it lies under it."""
    _check(libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                      b"size=64k,mode=0755"), f"hide {path}")
    if _under(keep, path):
        os.makedirs(keep, exist_ok=True)
        _check(libc.mount(f"/proc/self/fd/{kept}".encode(), os.fsencode(keep), None, MS_BIND | MS_REC, None),
               f"keep {keep}")
        _remount_readonly(libc, keep)
    _remount_readonly(libc, path)


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _set_limits(limits: dict) -> None:
    cpu = limits["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at the soft limit, SIGKILL a second later
    # PID 1 of a namespace ignores every signal it has no handler for, SIGXCPU included.
    signal.signal(signal.SIGXCPU, _out_of_cpu)
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"],) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the size limit then fails with EFBIG, reported


def _out_of_cpu(signum: int, _frame) -> None:
    os._exit(128 + signum)  # exits at once: a grader that catches exceptions cannot carry on


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_privileges(libc) -> None:
    """No capabilities now or after any exec: bounding and ambient sets emptied, then the process sets."""
    cap = 0
    while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    if ctypes.get_errno() != errno.EINVAL or cap == 0:  # EINVAL marks the end of the capability list
        _check(-1, "drop the capability bounding set")
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
    _check(libc.capset(ctypes.byref(_CapHeader(LINUX_CAPABILITY_VERSION_3, 0)), (_CapData * 2)()), "capset")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")


def _grade(payload: bytes) -> dict:
    try:
        data = json.loads(payload)
        namespace = {"__name__": "grader"}
        exec(compile(data["source"], "grader.py", "exec"), namespace)  # noqa: S102 - this is the sandbox
        grade = namespace.get("grade")
        if not callable(grade):
            return {"error": "the source defines no function grade(sample, item)"}
        value = grade(data["sample"], data["item"])
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return {"error": f"grade() returned a {type(value).__name__}, not a number"}
        if not math.isfinite(value):
            return {"error": f"grade() returned {value!r}, not a finite number"}
        return {"score": float(value)}
    except BaseException as exc:  # SystemExit and MemoryError included: everything is the grader's fault here
        return {"error": _describe(exc)}


def _describe(exc: BaseException) -> str:
    """``Type: message (grader.py line N)``, one line, without a traceback."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except BaseException:  # a __str__ that raises
        text = type(exc).__name__
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "grader.py":
            line = tb.tb_lineno
        tb = tb.tb_next
    where = f" (grader.py line {line})" if line else ""
    return " ".join(text.split())[: ERROR_CHARS - len(where)] + where


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    return libc


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _write(path: str, text: str) -> None:
    # Raw fds, not open(): after _become the codec modules under /root may be out of reach.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _fail(message: str, out: int = 1) -> None:
    os.write(out, json.dumps({"sandbox": message}).encode() + b"\n")
    os._exit(EXIT_SETUP)


if __name__ == "__main__":
    _launcher()
