"""Run a strop ASGI app under uvicorn until SIGTERM or Ctrl-C, draining requests first."""
from __future__ import annotations

import signal
import sys

DRAIN_CUT_OFF = 6  # exit status when SIGTERM's drain timed out and requests were cut off


def drained(cut: int, drain_timeout: float, what: str) -> int:
    """The one line and exit status that end a server: 0 when every request finished."""
    if cut:
        print(f"strop: {what} stopped; {cut} request(s) still running after the {drain_timeout:g} s drain "
              f"(--drain-timeout) were cut off (exit {DRAIN_CUT_OFF})", file=sys.stderr, flush=True)
        return DRAIN_CUT_OFF
    print(f"strop: {what} stopped", file=sys.stderr, flush=True)
    return 0


class _DrainLog:
    """A logging filter on uvicorn.error: counts the tasks uvicorn cancels when the graceful
    shutdown times out, and drops the tracebacks it would print for each of them."""

    def __init__(self) -> None:
        self.cut = 0

    def filter(self, record) -> bool:
        import asyncio

        if record.getMessage().startswith("Cancel ") and "timeout graceful shutdown" in record.getMessage():
            self.cut = int(record.args[0]) if record.args else 1
            return False
        exc = record.exc_info[1] if record.exc_info else None
        return not (self.cut and isinstance(exc, asyncio.CancelledError))


def serve_until_stopped(app, host: str, port: int, drain_timeout: float) -> int:
    """uvicorn until SIGTERM/Ctrl-C; returns how many requests the drain had to cut off."""
    import logging

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           timeout_graceful_shutdown=drain_timeout))
    log, drain = logging.getLogger("uvicorn.error"), _DrainLog()
    log.addFilter(drain)
    # uvicorn drains, restores the previous handler and re-raises the signal; a no-op
    # handler there makes a drained SIGTERM end in exit status 0, as process managers expect.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        log.removeFilter(drain)
    return drain.cut
