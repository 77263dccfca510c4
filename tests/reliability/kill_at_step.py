"""Run the strop CLI and SIGKILL it at an exact point of training, not after a sleep.

    python kill_at_step.py STEP train --data ...

The process kills itself when optimizer step STEP + 1 is about to begin, i.e.
after step STEP has run, logged its samples row and saved any checkpoint due.
A kill timed from outside raced the run's own speed: on a fast machine a short
run could finish first, on a slow one it could land anywhere.
"""
from __future__ import annotations

import os
import signal
import sys

import strop  # noqa: F401  (sets strop's environment defaults before transformers is imported)
from transformers.trainer_callback import CallbackHandler


def main() -> int:
    step, argv = int(sys.argv[1]), sys.argv[2:]
    original = CallbackHandler.on_step_begin

    def on_step_begin(self, args, state, control):
        if state.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, args, state, control)

    CallbackHandler.on_step_begin = on_step_begin
    from strop.cli import main as strop_main
    return strop_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
