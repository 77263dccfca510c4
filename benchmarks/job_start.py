"""How long a fine-tuning job of `strop service` takes from launch to its end, forked warm or started cold.

The service's local launcher forks each job from a process that has imported the training stack
(src/strop/service/warm.py); `LocalLauncher(warm=False)` starts `python -m strop.service.runner` as a plain
process, as strop did before. A 3-step LoRA job on a tiny model built from a config (2 layers, hidden 64)
makes the start the whole cost. Each way runs --repeats times, alternating; the median is reported with the
CPU seconds the job process itself used (wall and CPU of the child, from its exit).

    python benchmarks/job_start.py [--repeats 5] [--out benchmarks/results/job_start.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path


def tiny_model(root: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from strop import models

    tok = models.load_tokenizer("smollm2-135m-instruct")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    out = root / "model"
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def one_job(launcher, model: Path, data: Path, root: Path) -> tuple[float, float]:
    from strop.core.config import to_yaml
    from strop.methods.options import load_train_config

    run = Path(tempfile.mkdtemp(dir=root))
    cfg = load_train_config(None, {"base_model": str(model), "data": str(data), "max_steps": "3", "val_size": "0",
                                   "output_dir": str(run), "report_to": "none", "preserve": "none"})
    (run / "job.yaml").write_text(to_yaml(cfg))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = launcher.start([sys.executable, "-m", "strop.service.runner", str(run)], run,
                          {**os.environ, "PYTHONUNBUFFERED": "1", "STROP_THREADS": "1"}, run.name)
    while proc.poll() is None:
        time.sleep(0.02)
    wall = time.monotonic() - t0
    if proc.poll() != 0:
        raise SystemExit(f"job failed ({proc.poll()}): {(run / 'train.log').read_text()[-2000:]}")
    proc.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # a forked job is the forkserver's child: see below
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from strop.service.launchers import LocalLauncher

    root = Path(tempfile.mkdtemp(prefix="strop-job-start-"))
    model = tiny_model(root)
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]})
                            + "\n" for i in range(12)))
    warm, cold = LocalLauncher(warm=True), LocalLauncher(warm=False)
    warm.prepare()
    time.sleep(10)  # the forkserver's imports finish before the first warm job, as in a service that has idled
    walls: dict[str, list[float]] = {"warm": [], "cold": []}
    cpus: list[float] = []
    for _ in range(args.repeats):
        for name, launcher in (("cold", cold), ("warm", warm)):
            wall, cpu = one_job(launcher, model, data, root)
            walls[name].append(wall)
            if name == "cold":
                cpus.append(cpu)  # a forked job's CPU is charged to the forkserver, not to this process
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "job": "3-step LoRA on a 2-layer tiny Llama, one training thread",
        "repeats": args.repeats,
        "cold_wall_s_median": round(statistics.median(walls["cold"]), 2),
        "warm_wall_s_median": round(statistics.median(walls["warm"]), 2),
        "cold_cpu_s_median": round(statistics.median(cpus), 2),
        "walls": {k: [round(v, 2) for v in vs] for k, vs in walls.items()},
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
