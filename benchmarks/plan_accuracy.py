"""Plan accuracy: estimated vs measured peak RSS of real `strop train` runs on the default model.

For each method and max_length: a real run (few steps) in a child process,
the plain `strop plan` estimate, and `strop plan --measure`. Writes a markdown
table for docs/planning.md. The CPU is shared with other work, so times vary;
memory does not depend on load.

    .venv/bin/python benchmarks/plan_accuracy.py --methods full lora --lengths 128 512 --steps 4
    .venv/bin/python benchmarks/plan_accuracy.py --methods lora --gradient-checkpointing true \
        --out benchmarks/results/plan_accuracy_checkpointing.md
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

WORDS = "the quick brown fox jumps over the lazy dog while seven wizards quietly hum old songs".split()


def long_data(path: Path, rows: int = 24) -> None:
    """Conversations longer than 512 tokens, so max_length bounds every batch."""
    out = []
    for i in range(rows):
        q = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(60))
        a = " ".join(WORDS[(3 * i + j) % len(WORDS)] for j in range(700))
        out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in out))


def strop(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "strop", *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return proc


def one(tmp: Path, data: Path, method: str, length: int, steps: int, checkpointing: str = "auto") -> dict:
    keys = ["--data", str(data), "--method", method, "--max-length", str(length), "--val-size", "0", "--report-to", "none",
            "--gradient-checkpointing", checkpointing]
    out = tmp / f"{method}-{length}"
    strop("train", *keys, "--max-steps", str(steps), "--output-dir", str(out))
    measured = json.loads((out / "summary.json").read_text())["peak_rss_mb"]
    strop("plan", *keys, "--json", str(tmp / "plain.json"))
    plan = json.loads((tmp / "plain.json").read_text())
    plain, parts = plan["memory_mb"]["total"], plan["memory_mb"]
    strop("plan", *keys, "--measure", "--json", str(tmp / "measured.json"))
    calibrated = json.loads((tmp / "measured.json").read_text())["measured"]["peak_rss_mb"]
    return {"method": method, "max_length": length, "measured": measured, "plain": plain, "measure": calibrated,
            "breakdown": parts, "batch_tokens": plan["batch_tokens"], "gradient_checkpointing": plan["gradient_checkpointing"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=["full", "lora"])
    ap.add_argument("--lengths", nargs="+", type=int, default=[128, 512])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/results/plan_accuracy.md")
    ap.add_argument("--gradient-checkpointing", default="auto", choices=["auto", "true", "false"])
    a = ap.parse_args()
    lines = ["| method | max_length | measured peak RSS MB | plain estimate (error) | --measure (error) |", "|---|---|---|---|---|"]
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        long_data(tmp / "long.jsonl")
        for m in a.methods:
            for n in a.lengths:
                r = one(tmp, tmp / "long.jsonl", m, n, a.steps, a.gradient_checkpointing)
                rows.append(r)
                err = lambda x: f"{x:,.0f} ({100 * (x - r['measured']) / r['measured']:+.0f}%)"  # noqa: E731
                lines.append(f"| {m} | {n} | {r['measured']:,.0f} | {err(r['plain'])} | {err(r['measure'])} |")
                print(lines[-1], flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    Path(a.out).with_suffix(".json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
