"""Training throughput: plain TRL SFTTrainer + LoRA (A) vs `strop train` (B), side by side.

Both runs use the same model, data, LoRA settings, learning rate, effective
batch (8 examples), optimizer steps and example order, each in a fresh
subprocess. Reported per run: non-padding tokens/s after warm-up, peak RSS,
per-step loss and final loss; then the ratios B/A. With ``--device cuda`` also
MFU (model FLOPs against the card's dense bf16 peak) and peak GPU memory.

    python benchmarks/train_throughput.py                    # CPU, 12 steps
    python benchmarks/train_throughput.py --steps 30 --json out.json
    python benchmarks/train_throughput.py --strop-args "--gradient-checkpointing true --checkpoint-layers 20"
    python benchmarks/train_throughput.py --device cuda      # skipped cleanly without a GPU
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "tests" / "fixtures" / "peer" / "alpaca_en_demo.json"

# The baseline as a user would write it from the TRL docs: prompt/completion
# rows (so the loss is on the answer only), LoRA r16/alpha32 on all linear
# layers, fp32, micro-batch 8, max_length 512, otherwise defaults.
BASELINE = textwrap.dedent('''
    import json, resource, sys, time
    import datasets, torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    model_dir, data, steps, out, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    rows = json.load(open(data))
    def convert(r):
        prompt = r["instruction"] + ("\\n\\n" + r["input"] if r.get("input", "").strip() else "")
        return {"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": r["output"]}]}
    ds = datasets.Dataset.from_list([convert(r) for r in rows])
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    log = []
    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            log.append({"step": state.global_step, "t": time.perf_counter(), "tokens": state.num_input_tokens_seen})
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                log.append({"step": state.global_step, "loss": logs["loss"]})
    args = SFTConfig(output_dir=out, per_device_train_batch_size=8, max_length=512, max_steps=steps, learning_rate=2e-4,
                     logging_steps=1, report_to=[], save_strategy="no", include_num_input_tokens_seen="non_padding",
                     use_cpu=device == "cpu", disable_tqdm=True)
    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config,
                         callbacks=[Timer()])
    t0 = time.perf_counter()
    trainer.train()
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    json.dump({"log": log, "t0": t0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "peak_gpu_mb": peak_gpu}, open(out + "/bench.json", "w"))
''')


def machine() -> dict:
    flags = ""
    cpu = platform.processor()
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = " ".join(f for f in line.split(":", 1)[1].split() if f.startswith(("avx512", "amx")))
                break
    import torch

    return {"cpu": cpu, "flags": flags, "threads": torch.get_num_threads(), "cores": os.cpu_count(),
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def run_baseline(model_dir: str, data: Path, steps: int, work: Path, device: str) -> dict:
    out = work / "baseline"
    out.mkdir()
    script = work / "baseline.py"
    script.write_text(BASELINE)
    subprocess.run([sys.executable, str(script), model_dir, str(data), str(steps), str(out), device], check=True)
    raw = json.loads((out / "bench.json").read_text())
    timing = [r for r in raw["log"] if "t" in r]
    losses = [r["loss"] for r in raw["log"] if "loss" in r]
    return {"timing": timing, "losses": losses, "peak_rss_mb": raw["peak_rss_mb"], "peak_gpu_mb": raw["peak_gpu_mb"]}


def run_strop(data: Path, steps: int, work: Path, extra: list[str]) -> dict:
    out = work / "strop"
    cmd = [sys.executable, "-m", "strop", "train", "--data", str(data), "--output-dir", str(out), "--max-steps", str(steps),
           "--micro-batch-size", "8", "--max-length", "512", "--learning-rate", "2e-4", "--lora-r", "16",
           "--lora-alpha", "32", "--lora-dropout", "0", "--lr-scheduler-type", "linear", "--warmup-ratio", "0",
           "--val-size", "0", "--report-to", "none", "--save-steps", str(steps * 10), *extra]
    subprocess.run(cmd, check=True)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    timing = [{"step": r["step"], "t": r["time_s"], "tokens": r.get("num_input_tokens_seen")} for r in rows if "loss" in r]
    losses = [r["loss"] for r in rows if "loss" in r]
    return {"timing": timing, "losses": losses, "peak_rss_mb": summary["peak_rss_mb"], "peak_gpu_mb": summary["peak_gpu_mb"]}


def flops_per_token(model_dir: str) -> float:
    """Model FLOPs per trained token for LoRA: forward (2N) + input gradients (2N) over the linear
    layers and the LM head; the frozen weights get no gradient and LoRA's own matmuls are ignored."""
    from strop.plan.shape import read_shape

    shape = read_shape(Path(model_dir))
    return 4.0 * (shape.linear_params() + shape.vocab * shape.hidden)


def mfu(tokens_s: float, model_dir: str, device: str) -> float | None:
    """Model FLOPs utilisation against the GPU's dense bf16 peak (strop's hardware table); None on CPU."""
    if device != "cuda":
        return None
    from strop.plan.hardware import get_device

    return round(tokens_s * flops_per_token(model_dir) / (get_device("cuda").bf16_tflops * 1e12), 4)


def tokens_per_s(timing: list[dict], warmup: int) -> float:
    after = [r for r in timing if r["step"] >= warmup]
    first, last = after[0], after[-1]
    return (last["tokens"] - first["tokens"]) / (last["t"] - first["t"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2, help="steps excluded from tokens/s")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--strop-args", default="", help="extra `strop train` options, e.g. '--padding-free false'")
    args = p.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: --device cuda needs a CUDA GPU, none is visible")
        return 0
    if not args.data.is_file():
        print(f"benchmark data not found: {args.data}", file=sys.stderr)
        return 2
    from strop import models

    model_dir = str(models.resolve("smollm2-135m-instruct"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        a = run_baseline(model_dir, args.data, args.steps, work, args.device)
        b = run_strop(args.data, args.steps, work, args.strop_args.split())
    result = {"machine": machine(), "steps": args.steps, "warmup_steps": args.warmup, "data": str(args.data)}
    for name, r in (("A_trl_baseline", a), ("B_strop", b)):
        rate = round(tokens_per_s(r["timing"], args.warmup), 1)
        result[name] = {"tokens_per_s": rate, "mfu": mfu(rate, model_dir, args.device), "peak_rss_mb": round(r["peak_rss_mb"]),
                        "peak_gpu_mb": r["peak_gpu_mb"], "final_loss": r["losses"][-1], "losses": r["losses"]}
    ra, rb = result["A_trl_baseline"], result["B_strop"]
    result["ratios"] = {"tokens_per_s": round(rb["tokens_per_s"] / ra["tokens_per_s"], 2),
                        "peak_rss": round(rb["peak_rss_mb"] / ra["peak_rss_mb"], 3),
                        "peak_gpu": round(rb["peak_gpu_mb"] / ra["peak_gpu_mb"], 3) if ra["peak_gpu_mb"] else None,
                        "final_loss_rel_diff": round(abs(rb["final_loss"] - ra["final_loss"]) / ra["final_loss"], 4),
                        "mean_loss_rel_diff": round(abs(sum(rb["losses"]) - sum(ra["losses"])) / sum(ra["losses"]), 4)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
