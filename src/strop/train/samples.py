"""Which examples each optimizer step consumed, and loss spikes named by those examples.

Every training row carries a ``sample_id`` (``file:line`` of the example).
The id travels beside the batch: the training collator lifts it out of the
rows before the real collator sees them and hangs it on the batch; the
wrapped ``training_step`` takes it off before the model does. Ids are
recorded per micro-batch, so a batch the dataloader prefetched but never
trained on is never logged. At each step end rank 0 appends
``{"step", "ids", "loss"}`` to ``samples.jsonl``; on resume the file is
rewound to the checkpoint's step, like ``metrics.jsonl``.

A step whose loss exceeds ``loss_spike_factor`` x the median of the previous
``WINDOW`` steps is flagged in that row (``"spike"``) and listed in
summary.json, so a bad example can be found by its id.
"""
from __future__ import annotations

import json
import statistics
import sys
from collections import deque
from collections.abc import MutableMapping
from pathlib import Path

from transformers import TrainerCallback

SAMPLE_ID = "sample_id"
WINDOW = 50
MIN_HISTORY = 5  # steps needed before a median means anything


def read_rows(path: Path) -> list[dict]:
    """The log's rows; a last line torn by a kill is dropped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
    return rows


def rewind(path: Path, step: int, write: bool = True) -> list[dict]:
    """Keep rows up to ``step`` (a resumed run logs each later step once) and return them."""
    rows = [r for r in read_rows(path) if r["step"] <= step]
    if write and path.is_file():
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


class SampleLog(TrainerCallback):
    def __init__(self, path: Path, spike_factor: float, history: list[dict] | None = None, stream=sys.stderr) -> None:
        self.path = path
        self.spike_factor = spike_factor
        self.stream = stream
        self.ids: list[str] = []
        self.loss = None  # (,) tensor summed over the step's micro-batches; read once per step
        self.recent = deque((r["loss"] for r in history or [] if r.get("loss") is not None), maxlen=WINDOW)
        self.spikes = [{"step": r["step"], "loss": r["loss"], "ids": r["ids"]} for r in history or [] if r.get("spike")]

    def record(self, ids: list[str], loss) -> None:
        self.ids.extend(ids)
        loss = loss.detach().float()
        self.loss = loss if self.loss is None else self.loss + loss

    def on_step_end(self, args, state, control, **kwargs):
        loss = float(self.loss) if self.loss is not None else None
        row = {"step": state.global_step, "ids": self.ids, "loss": loss}
        self.ids, self.loss = [], None
        if loss is None or loss != loss:  # NaN: the non-finite guard reports those
            return self._write(row, state)
        if self.spike_factor > 0 and len(self.recent) >= MIN_HISTORY:
            median = statistics.median(self.recent)
            if loss > self.spike_factor * median:
                row["spike"] = {"median": median, "factor": self.spike_factor}
                self.spikes.append({"step": row["step"], "loss": loss, "ids": row["ids"]})
                if state.is_world_process_zero:
                    print(f"strop: loss spike at step {row['step']}: {loss:.4f} > {self.spike_factor:g} x median "
                          f"{median:.4f}; samples {', '.join(row['ids']) or '(untracked)'}", file=self.stream)
        self.recent.append(loss)
        self._write(row, state)

    def _write(self, row: dict, state) -> None:
        if state.is_world_process_zero:
            with self.path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


class _IdCollator:
    """Take ``sample_id`` out of the rows; with ``attach`` hang the ids on the batch."""

    def __init__(self, inner, attach: bool) -> None:
        self.inner = inner
        self.attach = attach

    def __call__(self, examples):
        ids = [str(ex.pop(SAMPLE_ID)) for ex in examples if SAMPLE_ID in ex]
        batch = self.inner(examples)
        if self.attach and ids:
            batch[SAMPLE_ID] = ids
        return batch


def track(trainer, log: SampleLog) -> None:
    """Route sample ids from the training rows to ``log``, one micro-batch at a time."""
    trainer._set_signature_columns_if_needed()
    if SAMPLE_ID not in trainer._signature_columns:
        trainer._signature_columns = [*trainer._signature_columns, SAMPLE_ID]  # keep the column for the collator
    inner = trainer.data_collator
    trainer.data_collator = _IdCollator(inner, attach=False)  # evaluation: ids dropped
    train_loader, step = trainer.get_train_dataloader, trainer.training_step

    def get_train_dataloader():
        trainer.data_collator = _IdCollator(inner, attach=True)
        try:
            return train_loader()
        finally:
            trainer.data_collator = _IdCollator(inner, attach=False)

    def training_step(model, inputs, *args, **kwargs):
        ids = inputs.pop(SAMPLE_ID, []) if isinstance(inputs, MutableMapping) else []  # GRPO passes raw rows
        loss = step(model, inputs, *args, **kwargs)
        log.record(ids, loss)
        return loss

    trainer.get_train_dataloader = get_train_dataloader
    trainer.training_step = training_step
