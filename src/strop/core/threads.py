"""CPU threads for a machine that is doing something else too.

PyTorch's CPU kernels run on an OpenMP pool with one thread per core. Every
parallel region (most ops of a training step) ends at a barrier where the
threads wait for the slowest. When another program holds a core, the
scheduler deschedules one of strop's threads for a whole time slice and the
others wait at each barrier for it: on the 2-core development machine one
busy Python loop beside a training took it from about 0.7 s to 30-116 s per
step (BENCHMARKS.md has today's figures). A laptop with a browser and an IDE
open is this case.

So strop sizes the pool to the cores nobody else is using: the CPUs this
process may run on (affinity, and a cgroup CPU quota when there is one, and
never more than PyTorch's own choice or a count the caller set), minus the
CPU time other processes used over the last couple of seconds (``/proc/stat``
less this process's own time), at least one. Training
re-checks between steps and resizes with ``torch.set_num_threads``, and
puts the original size back when it ends;
``generate``, ``chat``, ``eval`` and ``serve`` choose once at start.

``STROP_THREADS`` (or ``--threads`` on any command) overrides it: ``auto``
(the default), a number, or ``fixed`` for PyTorch's own choice (the old
behaviour, also kept when ``OMP_NUM_THREADS`` is set, as ``--nproc`` does
for its ranks, and on CUDA machines). This module stays free of torch so the CLI can read the policy
before torch loads.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

ENV = "STROP_THREADS"
RECHECK_S = 2.0  # seconds between load readings while training
_CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def policy() -> str:
    """``auto``, ``fixed`` or a positive count, from STROP_THREADS; a bad value is refused in one line."""
    from .errors import StropError

    value = os.environ.get(ENV, "").strip().lower()
    if not value:  # an OMP_NUM_THREADS the user or a launcher (--nproc) set is kept as it is
        return "fixed" if os.environ.get("OMP_NUM_THREADS") else "auto"
    if value in ("auto", "fixed") or (value.isdigit() and int(value) > 0):
        return value
    raise StropError(f"{ENV} / --threads: {value!r} is not auto, fixed or a positive number of threads")


def allowed_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy CPU time of the whole machine, this process's CPU time), in clock ticks; None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return user + nice + system + irq + softirq + steal, int(own[11]) + int(own[12])  # utime + stime
    except (OSError, ValueError, IndexError):
        return None


class Load:
    """CPU time that *other* processes used since the previous reading, in cores."""

    def __init__(self) -> None:
        self._t, self._last = time.monotonic(), _busy_jiffies()

    def others(self) -> float | None:
        now, cur = time.monotonic(), _busy_jiffies()
        if cur is None or self._last is None or now - self._t < 0.05:
            return None
        busy = (cur[0] - self._last[0]) - (cur[1] - self._last[1])
        cores = max(0.0, busy / _CLK / (now - self._t))
        self._t, self._last = now, cur
        return cores


def choose(allowed: int, others: float | None) -> int:
    """Threads for the cores left over: a core counts as taken when others used more than half of one."""
    if others is None:
        return allowed
    return max(1, min(allowed, allowed - math.floor(others + 0.5)))


class Sizer:
    """Keeps torch's thread pool at :func:`choose`'s size; ``step()`` between units of work."""

    def __init__(self) -> None:
        import torch

        self.policy = policy()
        if self.policy == "auto" and torch.cuda.is_available():
            self.policy = "fixed"  # the work is on the GPU; the CPU threads feed it
        # never more than torch's own choice (physical cores) or what the caller set with
        # torch.set_num_threads: auto only gives threads back while others are busy
        self.original = torch.get_num_threads()
        self.allowed = min(allowed_cpus(), self.original)
        self.load = Load()
        self.changes = 0
        self.current = None
        self._checked = 0.0
        if self.policy.isdigit():
            self._set(int(self.policy))

    def _set(self, n: int) -> None:
        import torch

        if n != self.current:
            if self.current is not None:
                self.changes += 1
            torch.set_num_threads(n)
            self.current = n

    def step(self, force: bool = False) -> None:
        if self.policy != "auto":
            return
        now = time.monotonic()
        if not force and now - self._checked < RECHECK_S:
            return
        self._checked = now
        self._set(choose(self.allowed, self.load.others()))

    def restore(self) -> None:
        """Back to the pool size the process had before (a Python caller's own setting included)."""
        import torch

        if self.current is not None:
            torch.set_num_threads(self.original)

    def record(self) -> dict:
        import torch

        return {"policy": self.policy, "allowed_cpus": self.allowed,
                "threads": self.current if self.current is not None else torch.get_num_threads(),
                "changes": self.changes}


def configure_once() -> Sizer:
    """Choose the pool size once, from the load over the last moment (commands that are not training)."""
    sizer = Sizer()
    if sizer.policy == "auto":
        time.sleep(0.2)  # a short window to read the others' load over
        sizer.step(force=True)
    return sizer
