"""`strop compare`: train several methods on the same split and step budget, then tabulate.

Each method trains in its own process, so peak RSS is that method's alone
and one method's memory cannot leak into the next. The held-out set is
scored in this process with the same assistant-only loss `strop eval` uses.
Outputs: compare.json, compare.md and compare.png in the output directory.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from . import methods
from .core.config import DEFAULT_MODEL
from .core.errors import StropError
from .core.paths import check_output

# Learning rates in the range each method's paper / peft examples use; the
# soft-prompt methods need far larger steps than weight-space methods.
LEARNING_RATES = {
    "full": 5e-5, "lora": 1e-3, "dora": 1e-3, "qlora": 1e-3, "ia3": 1e-2,
    "prompt_tuning": 3e-2, "prefix_tuning": 1e-2, "adapter": 1e-3,
}
WEIGHT_SUFFIXES = (".safetensors", ".bin")
COLUMNS = ("method", "heldout_loss", "heldout_ppl", "trainable_params", "trainable_percent", "peak_rss_mb",
           "tokens_per_s", "train_wall_s", "adapter_mb")


def parse_methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise StropError("option --methods: give a comma-separated list, e.g. lora,ia3,full")
    for name in names:
        methods.get(name)  # unknown names fail here, before anything trains
    if len(set(names)) != len(names):
        raise StropError(f"option --methods: {text!r} names a method twice")
    return names


def compare(data: str, names: list[str], output: str, base_model: str = DEFAULT_MODEL, max_steps: int = 30,
            val_size: float = 0.1, seed: int = 42, micro_batch_size: int = 4, max_length: int = 512) -> dict:
    """Train every method in ``names`` for ``max_steps`` on one split; score each on the held-out part."""
    out = check_output(output, kind="dir", label="--output")  # before the first of several trainings
    if out.exists() and any(out.iterdir()):
        raise StropError(f"option --output: {out} is not empty; choose a new directory")
    train_file, heldout_file = _split(data, out, val_size, seed)
    common = {"base_model": base_model, "data": str(train_file), "max_steps": max_steps, "val_size": 0,
              "seed": seed, "micro_batch_size": micro_batch_size, "max_length": max_length, "report_to": "none",
              "warmup_ratio": 0.1, "early_stopping_patience": 0,
              "save_steps": 10**9}  # no mid-run checkpoints: they would time disk writes, not training
    rows = [_score_base(base_model, heldout_file, max_length)]
    for name in names:
        run_dir = out / "runs" / name
        cfg = common | {"method": name, "output_dir": str(run_dir), "learning_rate": LEARNING_RATES[name]}
        wall = _train_subprocess(cfg)
        rows.append(_row(name, run_dir, heldout_file, max_length, wall))
    result = {"data": data, "base_model": base_model, "max_steps": max_steps, "val_size": val_size, "seed": seed,
              "heldout_file": str(heldout_file), "learning_rates": {n: LEARNING_RATES[n] for n in names}, "rows": rows}
    (out / "compare.json").write_text(json.dumps(result, indent=2))
    (out / "compare.md").write_text(markdown_table(rows) + "\n")
    plot(rows, out / "compare.png")
    return result


def _split(data: str, out: Path, val_size: float, seed: int) -> tuple[Path, Path]:
    from .data import load, split
    from .data.write import row_of, write_rows

    train, heldout = split(load(data).conversations, val_size, seed)
    if not heldout:
        raise StropError("option --val-size: compare needs a held-out part (use a value above 0)")
    return (write_rows(out / "split" / "train.jsonl", [row_of(c) for c in train]),
            write_rows(out / "split" / "heldout.jsonl", [row_of(c) for c in heldout]))


def _train_subprocess(cfg: dict) -> float:
    args = [sys.executable, "-m", "strop", "train"]
    for key, value in cfg.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    print(f"[compare] training {cfg['method']} ({cfg['max_steps']} steps)", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise StropError(f"compare: --method {cfg['method']} failed: {last}")
    return time.monotonic() - t0


def _heldout(model_name: str, heldout_file: Path, max_length: int) -> dict:
    """Token-weighted assistant-only loss, one row at a time through the model's own loss.

    The model's own ``labels`` path is used (not sliced logits) because prompt
    tuning prepends virtual tokens to the logits; peft pads the labels to match.
    """
    import math

    import torch

    from . import models
    from .data import load
    from .data.render import IGNORE, render

    model, tok = models.load(model_name)
    total, count = 0.0, 0
    with torch.inference_mode():
        for conv in load(str(heldout_file)).conversations:
            r = render(tok, conv, max_length)
            n = sum(1 for t in r.labels[1:] if t != IGNORE)  # position t predicts token t+1
            if n:
                out = model(input_ids=torch.tensor([r.input_ids]), labels=torch.tensor([r.labels]))
                total, count = total + out.loss.item() * n, count + n
    del model
    if not count:
        raise StropError(f"{heldout_file}: no assistant tokens to score within max_length {max_length}")
    return {"loss": total / count, "perplexity": math.exp(total / count), "tokens": count}


def _score_base(base_model: str, heldout_file: Path, max_length: int) -> dict:
    scores = _heldout(base_model, heldout_file, max_length)
    return {"method": "base (untrained)", "heldout_loss": scores["loss"], "heldout_ppl": scores["perplexity"],
            "trainable_params": 0, "trainable_percent": 0.0, "peak_rss_mb": None, "tokens_per_s": None,
            "train_wall_s": None, "adapter_mb": None}


def _row(name: str, run_dir: Path, heldout_file: Path, max_length: int, wall: float) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    scores = _heldout(str(run_dir), heldout_file, max_length)
    return {
        "method": name,
        "heldout_loss": scores["loss"],
        "heldout_ppl": scores["perplexity"],
        "trainable_params": summary["trainable_params"],
        "trainable_percent": summary["trainable_percent"],
        "peak_rss_mb": summary["peak_rss_mb"],
        "tokens_per_s": summary["tokens_per_s"],
        "train_wall_s": summary["wall_s"],
        "process_wall_s": round(wall, 1),  # includes loading the model and saving final/
        "adapter_mb": round(weights_bytes(run_dir / "final") / 2**20, 3),
        "train_loss": summary["train_loss"],
    }


def weights_bytes(final: Path) -> int:
    """Bytes of trained weights in final/ (the tokenizer files are the same for every method)."""
    return sum(p.stat().st_size for p in final.iterdir() if p.suffix in WEIGHT_SUFFIXES)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |"
    rule = "| " + " | ".join("---" for _ in COLUMNS) + " |"
    body = ["| " + " | ".join(_cell(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def plot(rows: list[dict], out_png: Path) -> Path:
    """Four bar charts: held-out loss, trainable params (log), peak RSS, tokens/s."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("heldout_loss", "held-out loss", False), ("trainable_params", "trainable params", True),
              ("peak_rss_mb", "peak RSS (MB)", False), ("tokens_per_s", "tokens/s", False)]
    fig = Figure(figsize=(12, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    for i, (key, title, log) in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), i)
        shown = [r for r in rows if r.get(key)]
        ax.bar([r["method"].split(" ")[0] for r in shown], [r[key] for r in shown], color="#4a7ab7")
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
        ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    fig.savefig(out_png)
    return out_png


def compare_cmd(args) -> int:
    names = parse_methods(args.methods)
    result = compare(args.data, names, args.output, base_model=args.base_model, max_steps=args.max_steps,
                     val_size=args.val_size, seed=args.seed)
    print(markdown_table(result["rows"]))
    print(f"table and plot: {args.output}/compare.md, compare.json, compare.png")
    return 0


def add_compare(sub) -> None:
    cp = sub.add_parser("compare", help="train several methods on one split and step budget; table + plot")
    cp.add_argument("--data", required=True, help="conversations; a seeded held-out part is split off")
    cp.add_argument("--methods", default="lora,dora,ia3,prompt_tuning,adapter,full", help="comma-separated")
    cp.add_argument("--max-steps", type=int, default=30, help="the same step budget for every method")
    cp.add_argument("--output", default="runs/compare", help="a new or empty directory")
    cp.add_argument("--base-model", default="smollm2-135m-instruct")
    cp.add_argument("--val-size", type=float, default=0.1)
    cp.add_argument("--seed", type=int, default=42)
    cp.set_defaults(func=compare_cmd)


PARSERS = {"compare": add_compare}
