"""`strop plan --measure`: a few real training steps in a child process, on the longest rows.

The child trains on the rows with the most tokens, so its micro-batches are
the widest the real run will see and its peak memory is the real run's peak
(what a short run on random rows would miss). Its tokens/s replaces the FLOP
model's guess.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from ..core.config import to_yaml
from ..core.errors import StropError


def measure(cfg, counted, steps: int = 3) -> dict:
    n = cfg.micro_batch_size * cfg.gradient_accumulation_steps * steps
    order = sorted(range(len(counted.lengths)), key=lambda i: -counted.lengths[i])[:n]
    with tempfile.TemporaryDirectory(prefix="strop-measure-") as tmp:
        data = Path(tmp) / "longest.jsonl"
        data.write_text("".join(json.dumps({"messages": counted.kept[i].as_dicts()}) + "\n" for i in order))
        child = dataclasses.replace(cfg, data=str(data), eval_data="", val_size=0, max_steps=steps,
                                    output_dir=str(Path(tmp) / "run"), report_to="none", resume=False,
                                    early_stopping_patience=0)
        (Path(tmp) / "config.yaml").write_text(to_yaml(child))
        proc = subprocess.run([sys.executable, "-m", "strop", "train", str(Path(tmp) / "config.yaml")],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise StropError(f"--measure: the short training run failed: {tail}")
        summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
    return {"steps": steps, "rows": len(order), "peak_rss_mb": summary["peak_rss_mb"],
            "peak_gpu_mb": summary.get("peak_gpu_mb"), "tokens_per_s": summary["tokens_per_s"],
            "wall_s": summary["wall_s"]}
