"""Chaos run: kill `strop train` with SIGKILL at random points, resume, compare with an uninterrupted run.

    python benchmarks/chaos.py --trials 30 --steps 12 --json chaos.json

A kill point is a random step k (1 .. steps-1) and a random fraction of a
step's duration after step k is logged, so kills land mid-step, between
steps and during checkpoint saves (every 2 steps).

Uses a tiny random Llama (2 layers, hidden 64) with the real SmolLM2 tokenizer,
float32, no dropout, so the uninterrupted and resumed runs must agree exactly.
Reports: trials, kills that landed before the run finished, how many of those
resumed from a checkpoint, resumes that matched exactly (final weights, every
per-step loss and the sample ids of every step), samples skipped and repeated
against the uninterrupted run (from samples.jsonl; must be 0), checkpoints
picked by resume that failed their manifest (must be 0), checkpoints holding a
non-finite tensor (must be 0) and pickle files in checkpoints (must be 0).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--lora-dropout", "0", "--mixed-precision", "no", "--val-size", "0", "--report-to", "none",
          "--learning-rate", "5e-3", "--micro-batch-size", "2", "--logging-steps", "1", "--save-steps", "2"]


def tiny_model(work: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from strop import models

    tok = models.load_tokenizer("smollm2-135m-instruct")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, initializer_range=0.1,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    out = work / "tiny"
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def cmd(model: Path, data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "strop", "train", "--base-model", str(model), "--data", str(data),
            "--output-dir", str(out), "--max-steps", str(steps), *COMMON, *extra]


def losses(run: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


def sample_steps(run: Path) -> list[tuple[int, list[str]]]:
    from strop.train.samples import read_rows

    return [(r["step"], r["ids"]) for r in read_rows(run / "samples.jsonl")]


def skipped_repeated(ref: list, got: list) -> tuple[int, int]:
    """Examples the resumed run never trained on, and ones it trained on more often, than the reference."""
    want = Counter(i for _, ids in ref for i in ids)
    seen = Counter(i for _, ids in got for i in ids)
    return sum((want - seen).values()), sum((seen - want).values())


def rows(path: Path) -> int:
    return sum(1 for _ in path.open()) if path.is_file() else 0


def kill_at(proc, samples: Path, step: int, frac: float) -> str:
    """SIGKILL ``frac`` of a step's duration after step ``step`` is logged: between steps, or during a save.

    Drawing the point in steps rather than seconds keeps it meaningful on a
    machine whose speed changes under other people's load.
    """
    last, before = time.monotonic(), 0
    while proc.poll() is None and (n := rows(samples)) < step:
        if n != before:
            last, before = time.monotonic(), n
        time.sleep(0.01)
    step_s = time.monotonic() - last if before else 0.5  # how long the step just logged took
    time.sleep(frac * step_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return f"{step}+{frac:.2f}"


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load:.1f} at start"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rng = random.Random(args.seed)
    from strop.core.pickle_guard import pickle_files
    from strop.core.manifest import verify_manifest
    from strop.train.reliability import non_finite_tensors
    from strop.core.rundir import RunDir

    started = time.monotonic()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = tiny_model(work)
        data = ROOT / "src" / "strop" / "demo_data" / "persona_train.jsonl"
        ref = work / "ref"
        subprocess.run(cmd(model, data, ref, args.steps), check=True, capture_output=True)
        ref_w, ref_l, ref_s = load_file(ref / "final" / "adapter_model.safetensors"), losses(ref), sample_steps(ref)
        report = {"trials": args.trials, "steps": args.steps, "machine": machine(), "killed_before_end": 0,
                  "resumed_from_checkpoint": 0, "exact_resumes": 0, "samples_skipped": 0, "samples_repeated": 0,
                  "partial_checkpoints_picked": 0, "non_finite_checkpoints": 0, "pickle_files_in_checkpoints": 0,
                  "kill_points": []}
        for i in range(args.trials):
            out = work / f"t{i}"
            step, frac = rng.randint(1, args.steps - 1), rng.random()
            proc = subprocess.Popen(cmd(model, data, out, args.steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            point = kill_at(proc, out / "samples.jsonl", step, frac)
            report["kill_points"].append(point)
            if (out / "final").exists():
                print(f"trial {i}: killed at step {point}, after the run had finished", flush=True)
                continue
            report["killed_before_end"] += 1
            picked = RunDir(out).latest_checkpoint()
            if picked is not None and not verify_manifest(picked):
                report["partial_checkpoints_picked"] += 1
            for ckpt in (out / "checkpoints").glob("checkpoint-*"):
                if (ckpt / "manifest.json").is_file() and non_finite_tensors(ckpt):
                    report["non_finite_checkpoints"] += 1
                report["pickle_files_in_checkpoints"] += len(pickle_files(ckpt))
            report["resumed_from_checkpoint"] += picked is not None
            extra = ("--resume", "true") if picked is not None else ()
            if picked is None:  # killed before the first checkpoint: start over in a fresh dir
                out = work / f"t{i}-fresh"
            subprocess.run(cmd(model, data, out, args.steps, *extra), check=True, capture_output=True)
            w = load_file(out / "final" / "adapter_model.safetensors")
            got_s = sample_steps(out)
            skipped, repeated = skipped_repeated(ref_s, got_s)
            report["samples_skipped"] += skipped
            report["samples_repeated"] += repeated
            if all(torch.equal(w[k], ref_w[k]) for k in ref_w) and losses(out) == ref_l and got_s == ref_s:
                report["exact_resumes"] += 1
            print(f"trial {i}: killed at step {point}, resumed from {picked.name if picked else 'scratch'}", flush=True)
    report["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
