"""Trainer callbacks: a readable progress bar and the metrics.jsonl log."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from transformers import TrainerCallback


class MetricsLog(TrainerCallback):
    """Append one JSON object per logged step (train and eval) to metrics.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "time_s": round(time.monotonic() - self.start, 2)}
        row.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


class Progress(TrainerCallback):
    """One progress line: step, loss, eval loss, tokens/s and ETA."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.bar = None
        self.loss = None
        self.eval_loss = None
        self.t0 = None
        self.tokens0 = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                        file=self.stream, dynamic_ncols=True)
        self.t0 = time.monotonic()
        self.tokens0 = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is None:
            return
        self.bar.update(state.global_step - self.bar.n)
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        post = {"tok/s": f"{(state.num_input_tokens_seen - self.tokens0) / elapsed:.0f}"}
        if self.loss is not None:
            post["loss"] = f"{self.loss:.4f}"
        if self.eval_loss is not None:
            post["eval"] = f"{self.eval_loss:.4f}"
        self.bar.set_postfix(post, refresh=False)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        self.loss = logs.get("loss", self.loss)
        self.eval_loss = logs.get("eval_loss", self.eval_loss)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
