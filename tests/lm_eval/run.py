"""lm-evaluation-harness, unmodified, against `strop serve` on the default model, checked against lm-eval's own
Hugging Face backend on the same weights.

`make test-lm-eval` runs this with lm-eval's Python (a venv of its own, as a separate client would have). It
starts `strop serve smollm2-135m-instruct` from strop's venv, then runs two tasks written for this check
(tasks/: 24 multiple-choice questions the project wrote, scored by log-likelihood; the same questions answered
greedily and scored by exact match) twice:

- ``--model local-completions`` pointed at the server, with no tokenizer named: lm-eval finds the server's
  /tokenizer_info and /tokenize routes and uses them (its "remote" tokenizer backend), sending token ids with
  ``echo``, ``logprobs: 1`` and ``max_tokens: 1`` to /v1/completions, eight prompts per request;
- ``--model hf`` on the same converted weights, in float32, which lm-eval runs itself.

It fails unless both give the same accuracy and exact match, every choice's log-likelihood agrees to 1e-3
nats and every greedy answer is the same text.

    python tests/lm_eval/run.py LM_EVAL_PYTHON [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STROP = Path(sys.executable).parent / "strop"
TASKS = ("strop_mc", "strop_gen")
TOLERANCE = 1e-3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def task_dir(work: Path) -> Path:
    """The task YAMLs with the questions' absolute path filled in."""
    out = work / "tasks"
    out.mkdir(parents=True)
    for path in (HERE / "tasks").glob("*.yaml"):
        (out / path.name).write_text(path.read_text().replace("QUESTIONS", str(HERE / "tasks" / "questions.jsonl")))
    return out


def lm_eval(python: str, model: str, model_args: str, tasks: Path, out: Path, env: dict) -> tuple[dict, dict, float]:
    """Run lm-eval; return (results by task, samples by task, seconds)."""
    t0 = time.monotonic()
    subprocess.run([python, "-m", "lm_eval", "--model", model, "--model_args", model_args, "--tasks", ",".join(TASKS),
                    "--include_path", str(tasks), "--output_path", str(out), "--log_samples", "--batch_size", "8", "--device", "cpu"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - t0
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    samples = {task: [json.loads(line) for line in next(out.rglob(f"samples_{task}_*.jsonl")).read_text().splitlines()]
               for task in TASKS}
    return results, samples, seconds


def by_doc(rows: list[dict]) -> dict[int, dict]:
    return {row["doc_id"]: row for row in rows}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("python", help="the Python of a venv with lm-eval[hf] installed")
    ap.add_argument("--out", help="keep lm-eval's outputs here (default: a temporary directory)")
    args = ap.parse_args()
    from strop import models

    weights = str(models.resolve("smollm2-135m-instruct"))
    work = Path(args.out or tempfile.mkdtemp(prefix="lm-eval-"))
    tasks = task_dir(work)
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    server = subprocess.Popen([str(STROP), "serve", "smollm2-135m-instruct", "--port", str(port)],
                              stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"strop serve exited: {server.stderr.read()[-2000:]}") from None
                time.sleep(0.1)
        served = lm_eval(args.python, "local-completions",
                         f"model=smollm2-135m-instruct,base_url=http://127.0.0.1:{port}/v1/completions,"
                         "num_concurrent=1,max_retries=1", tasks, work / "served", env)
    finally:
        server.terminate()
        server.wait(timeout=60)
    local = lm_eval(args.python, "hf", f"pretrained={weights},dtype=float32", tasks, work / "hf", env)

    failures = []
    for metric, task in (("acc,none", "strop_mc"), ("acc_norm,none", "strop_mc"), ("exact_match,strip", "strop_gen")):
        a, b = served[0][task][metric], local[0][task][metric]
        print(f"{task:<10} {metric:<18} strop serve {a:.4f}   lm-eval hf {b:.4f}")
        if a != b:
            failures.append(f"{task} {metric}: {a} against {b}")
    mc_served, mc_local = by_doc(served[1]["strop_mc"]), by_doc(local[1]["strop_mc"])
    gaps = [abs(float(x[0][0]) - float(y[0][0]))
            for d in mc_local for x, y in zip(mc_served[d]["resps"], mc_local[d]["resps"])]
    print(f"strop_mc   log-likelihoods: {len(gaps)} choices, largest difference {max(gaps):.2e} nats")
    if max(gaps) > TOLERANCE:
        failures.append(f"log-likelihoods differ by up to {max(gaps):.2e} nats (tolerance {TOLERANCE})")
    gen_served, gen_local = by_doc(served[1]["strop_gen"]), by_doc(local[1]["strop_gen"])
    same = sum(gen_served[d]["resps"] == gen_local[d]["resps"] for d in gen_local)
    print(f"strop_gen  greedy answers: {same}/{len(gen_local)} identical")
    if same != len(gen_local):
        failures.append(f"{len(gen_local) - same} greedy answers differ")
    print(f"time: strop serve {served[2]:.0f} s, lm-eval hf {local[2]:.0f} s (both tasks, with start-up)")
    for f in failures:
        print(f"FAIL {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
