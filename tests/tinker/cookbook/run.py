"""tinker-cookbook's own recipes, unmodified, against `strop tinker-serve` on the default model.

`make test-tinker-cookbook` runs this with the cookbook's Python (a venv of its own: cookbook 0.5.8
pins transformers<=5.5.4, strop needs a newer one). It starts the server from strop's venv, then:

- the supervised trainer (tinker_cookbook.supervised.train) on the cookbook's example conversations:
  the training NLL of the last steps must be below that of the first (what its docs say training does);
- the RL recipe tinker_cookbook.recipes.math_rl.train with env=arithmetic (generated problems, no dataset
  download), loss_fn=importance_sampling and the cookbook's ChatML renderer (qwen3_instruct: SmolLM2 has
  the same <|im_start|>/<|im_end|> tokens): the mean reward of the last quarter of the steps must be above the first quarter's.

    python tests/tinker/cookbook/run.py COOKBOOK_PYTHON [--sl-steps 12] [--rl-steps 8]
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(log_path: Path) -> list[dict]:
    return [json.loads(line) for line in (log_path / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("python", help="the Python of a venv with tinker-cookbook installed")
    ap.add_argument("--sl-steps", type=int, default=12)
    ap.add_argument("--rl-steps", type=int, default=8)
    args = ap.parse_args()
    from strop import models

    model = str(models.resolve("smollm2-135m-instruct"))
    work = Path(tempfile.mkdtemp(prefix="cookbook-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(STROP), "tinker-serve", "--port", str(port), "--workdir", str(work / "server")],
                              stderr=subprocess.PIPE, text=True)
    env = {**os.environ, "TINKER_BASE_URL": url, "TINKER_API_KEY": "tml-local", "TINKER_TELEMETRY": "0",
           "HF_HUB_OFFLINE": "1"}
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        t0 = time.monotonic()
        subprocess.run([args.python, str(HERE / "supervised.py"), model, str(work / "sl"), str(args.sl_steps)],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        sl_s = time.monotonic() - t0
        nll = [row["train_mean_nll"] for row in metrics(work / "sl") if "train_mean_nll" in row]
        t0 = time.monotonic()
        subprocess.run([args.python, "-m", "tinker_cookbook.recipes.math_rl.train", f"base_url={url}",
                        f"model_name={model}", "renderer_name=qwen3_instruct", "env=arithmetic",
                        "loss_fn=importance_sampling", "group_size=4", "groups_per_batch=4", "max_tokens=6",
                        "learning_rate=3e-4",
                        f"max_steps={args.rl_steps}", "eval_every=0", "save_every=0", "lora_rank=8",
                        f"log_path={work / 'rl'}", "behavior_if_log_dir_exists=delete"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        rl_s = time.monotonic() - t0
        rewards = [row["env/all/reward/total"] for row in metrics(work / "rl") if "env/all/reward/total" in row]
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"supervised: {len(nll)} steps in {sl_s:.0f} s, train NLL {[round(x, 3) for x in nll]}")
    print(f"rl (arithmetic): {len(rewards)} steps in {rl_s:.0f} s, reward per step {[round(x, 3) for x in rewards]}")
    k = max(1, len(nll) // 4)
    first, last = sum(nll[:k]) / k, sum(nll[-k:]) / k
    j = max(1, len(rewards) // 4)
    r_first, r_last = sum(rewards[:j]) / j, sum(rewards[-j:]) / j
    ok = len(nll) == args.sl_steps and last < first and len(rewards) == args.rl_steps and r_last > r_first
    print(f"{'PASS' if ok else 'FAIL'}: NLL first {k} steps {first:.3f} -> last {k} {last:.3f}; "
          f"reward first {j} steps {r_first:.3f} -> last {j} {r_last:.3f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
