"""Active learning benchmark: do uncertainty / diversity / hybrid beat random labelling?

Task: routing support tickets to five teams (strop.active.tasks: templated,
with mixed-topic tickets routed by their request and a few vague tickets with
random labels). Learner: logistic regression on frozen all-MiniLM-L6-v2
embeddings, retrained from scratch every round. Every strategy of a seed starts
from the same 10 random labels, then buys 10 labels per round for 12 rounds.

    .venv/bin/python benchmarks/active_learning.py            # writes results + plot
    .venv/bin/python benchmarks/active_learning.py --write-task DIR   # only pool/eval/loop.yaml, for `strop al loop`

Writes benchmarks/results/active_learning.json and docs/active-learning.png and
prints the table that docs/active-learning.md and BENCHMARKS.md quote.
The settings below were fixed before the first run and are not tuned to the outcome.
"""
from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"n_pool": 1200, "n_eval": 500, "task_seed": 0, "initial": 10, "budget": 10, "rounds": 12,
            "seeds": [0, 1, 2, 3, 4], "learner": "logreg"}


def write_task(target: Path) -> Path:
    """The benchmark's pool, held-out set and loop config, for use with the CLI."""
    from strop.active.tasks import make_task

    target.mkdir(parents=True, exist_ok=True)
    pool, held = make_task(SETTINGS["n_pool"], SETTINGS["n_eval"], SETTINGS["task_seed"])
    for name, rows in (("pool.jsonl", pool), ("eval.jsonl", held)):
        (target / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (target / "loop.yaml").write_text(
        "pool: pool.jsonl\neval: eval.jsonl\nlearner: logreg\n"
        f"seeds: {SETTINGS['seeds']}\ninitial: {SETTINGS['initial']}\noutput_dir: {target / 'loop'}\n")
    return target


def main() -> int:
    import os

    if sys.argv[1:2] == ["--write-task"] and len(sys.argv) == 3:
        print(f"wrote {write_task(Path(sys.argv[2]))}/pool.jsonl, eval.jsonl, loop.yaml")
        return 0

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from strop.active.curves import format_summary
    from strop.active.loop import LoopConfig, run_loop

    work = write_task(Path(tempfile.mkdtemp(prefix="strop-al-bench-")))
    cfg = LoopConfig(pool=str(work / "pool.jsonl"), eval=str(work / "eval.jsonl"), output_dir=str(work / "loop"),
                     learner=SETTINGS["learner"], seeds=SETTINGS["seeds"], rounds=SETTINGS["rounds"],
                     budget=SETTINGS["budget"], initial=SETTINGS["initial"]).validate()
    t0 = time.monotonic()
    result = run_loop(cfg, progress=lambda m: print(m, flush=True))
    wall = time.monotonic() - t0
    table = format_summary(result["summary"])
    print(table)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    result.update(settings=SETTINGS, wall_s=round(wall, 1), table=table,
                  machine=f"{platform.machine()}, {os.cpu_count()} CPU cores visible (shared), no GPU, "
                          f"Python {sys.version.split()[0]}")
    (out / "active_learning.json").write_text(json.dumps(result, indent=2))
    shutil.copy(result["plot"], ROOT / "docs" / "active-learning.png")
    print(f"wall {wall:.0f}s; results in {out / 'active_learning.json'}, plot in docs/active-learning.png")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
