"""The worker's child process: train one job (``python -m strop.service.runner RUN_DIR [--resume]``).

Training runs in its own process so a cancel can stop it cleanly (SIGTERM:
the trainer checkpoints after the current step and exits) and a crash in
torch cannot take the service down.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path


def _watch_parent(interval: float = 1.0) -> None:
    """If the service dies, stop the way a cancel does, so the restarted service can resume."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> int:
    from ..core.errors import StropError
    from ..core.logs import quiet_libraries
    from ..methods.options import load_train_config
    from ..train.run import train
    from .launchers import write_exit, write_process
    from .progress import PLAN, write_plan

    run_dir, resume = Path(argv[0]), "--resume" in argv[1:]
    _watch_parent()
    write_process(run_dir)
    quiet_libraries()
    code = 1
    try:
        cfg = load_train_config(str(run_dir / "job.yaml"), {"resume": "true"} if resume else {})
        if not (run_dir / PLAN).is_file():
            write_plan(cfg, run_dir)  # the finish estimate until the first steps are measured
        train(cfg, progress=False)
        code = 0
    except StropError as exc:
        (run_dir / "error.json").write_text(json.dumps({"message": str(exc), "exit_code": exc.exit_code}))
        print(f"strop: {exc}", file=sys.stderr)
        code = exc.exit_code
    except SystemExit as exc:  # a signal's exit (SIGTERM: checkpointed and stopped) keeps its code
        code = exc.code if isinstance(exc.code, int) else 1
        raise
    finally:
        write_exit(run_dir, code)  # a cluster scheduler does not hand the exit status back (launchers.py)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
