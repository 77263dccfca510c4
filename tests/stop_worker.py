"""One rank of test_distributed.test_stop_decisions_reach_every_rank (kept light: spawned processes import it)."""
from __future__ import annotations

import json
import signal
from pathlib import Path


def run(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist
    from transformers import TrainerControl

    from strop.train.distributed import StopTogether
    from strop.train.reliability import GracefulStop, NonFiniteGuard

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    stop, guard = GracefulStop(), NonFiniteGuard("abort", 3)
    sync = StopTogether(stop, guard)
    seen = []
    # step 1: nothing; step 2: a signal on rank 1 only; step 3: a non-finite update on rank 0 only
    for step, (sig, nan) in enumerate([(0, 0), (rank == 1, 0), (0, rank == 0)], start=1):
        stop.signal, guard.aborted_at = (signal.SIGTERM if sig else None), (step if nan else None)
        control = TrainerControl()
        sync.on_step_end(None, None, control)
        seen.append([control.should_training_stop, control.should_save, stop.signal, guard.aborted_at])
    Path(out, f"rank-{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()
