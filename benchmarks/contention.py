"""Training speed on a CPU that other programs are using too.

Runs the same short training (the default model, the demo data, 10 steps,
`--preserve none` so only the training loop is timed) idle, then beside K
busy processes (plain Python loops, at nice 0 and at nice 10), and prints
tokens/s for each and the ratio to idle. The goal (issue 20): beside K busy
processes on C cores, at least 0.8 x idle x C / (C + K), i.e. 80% of a fair
share of the machine; idle speed no more than 5% below the old default.

    python benchmarks/contention.py                       # strop's defaults
    python benchmarks/contention.py --env STROP_THREADS=fixed --label fixed  # the old fixed thread pool
    python benchmarks/contention.py --k 2 --nice 0        # one condition

A run that has not finished after --timeout seconds is stopped and its rate
taken from the steps it logged. Results are appended to
benchmarks/results/contention.json. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "strop" / "demo_data" / "persona_train.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "contention.json"
BUSY = "while True: pass"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def train(out: Path, steps: int, timeout: float, env: dict) -> dict:
    """tokens/s of one short training (from summary.json, or from its logged steps when stopped)."""
    argv = [sys.executable, "-m", "strop", "train", "--data", str(DATA), "--output-dir", str(out),
            "--max-steps", str(steps), "--val-size", "0", "--report-to", "none", "--preserve", "none",
            "--logging-steps", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] \
            if (out / "metrics.jsonl").is_file() else []
        rows = [r for r in rows if "num_input_tokens_seen" in r]
        if len(rows) < 2:
            return {"tokens_per_s": None, "stopped": True, "steps": len(rows)}
        a, b = rows[0], rows[-1]  # from the end of the first step: model loading left out, as in summary.json
        rate = (b["num_input_tokens_seen"] - a["num_input_tokens_seen"]) / max(b["time_s"] - a["time_s"], 1e-9)
        return {"tokens_per_s": round(rate, 1), "stopped": True, "steps": len(rows)}
    if proc.returncode:
        raise SystemExit(f"strop train failed ({proc.returncode}): {err[-1500:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"tokens_per_s": summary["tokens_per_s"], "stopped": False, "steps": summary["steps"],
            "threads": summary.get("threads")}


def beside(k: int, nice: int, run):
    """Run ``run()`` with ``k`` busy loops at ``nice`` beside it."""
    busy = [subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-c", BUSY]) for _ in range(k)]
    try:
        time.sleep(1.0)  # let them reach the scheduler's steady state
        return run()
    finally:
        for p in busy:
            p.kill()
            p.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, action="append", help="busy processes (default: 1 and 2)")
    p.add_argument("--nice", type=int, action="append", help="their niceness (default: 0 and 10)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--timeout", type=float, default=180, help="seconds before a run is stopped and rated from its log")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment for strop train")
    p.add_argument("--label", default="default")
    args = p.parse_args()
    env = dict(e.split("=", 1) for e in args.env)
    c = cores()
    conditions = [(0, 0)] + [(k, n) for n in (args.nice or [0, 10]) for k in (args.k or [1, 2])]
    results, idle = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for i, (k, nice) in enumerate(conditions):
            out = Path(tmp) / f"run{i}"
            r = beside(k, nice, lambda: train(out, args.steps, args.timeout, env)) if k else \
                train(out, args.steps, args.timeout, env)
            idle = r["tokens_per_s"] if k == 0 else idle
            target = 0.8 * c / (c + k)
            ratio = r["tokens_per_s"] / idle if r["tokens_per_s"] and idle else None
            row = {"k": k, "nice": nice, **r, "ratio_to_idle": round(ratio, 3) if ratio is not None else None,
                   "target_ratio": round(target, 3) if k else None}
            results.append(row)
            verdict = "" if not k or ratio is None else ("meets" if ratio >= target else "MISSES")
            print(f"{'idle' if not k else f'K={k} nice {nice}':<14} {r['tokens_per_s'] or 0:>7.1f} tokens/s"
                  f"{'' if ratio is None else f'  {ratio:.2f} of idle'}"
                  f"{'' if not k else f'  (goal >= {target:.2f}: {verdict})'}"
                  f"{'  [stopped at the timeout]' if r['stopped'] else ''}"
                  f"{'' if not r.get('threads') else '  threads ' + json.dumps(r['threads'])}", flush=True)
    done = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    done.append({"label": args.label, "env": env, "cores": c, "steps": args.steps,
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "results": results})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(done, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
