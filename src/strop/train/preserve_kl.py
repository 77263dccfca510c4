"""The ``preserve: kl`` term (train/preserve.py has the why): KL(base || model) on general rows, per micro-batch."""
from __future__ import annotations

import contextlib
import math
import random

from transformers import TrainerCallback

from .preserve import ratio_for


class KLToBase(TrainerCallback):
    """The ``preserve: kl`` term: a second backward per micro-batch, after the task's, on general rows.

    Installed by :func:`attach_kl`; as a callback it adds ``preserve_kl`` to the logged rows.
    The base never changes, so its last hidden states on a row are computed once (with the
    adapter off) and kept; each use then costs the base only its output layer, not a forward.
    """

    def __init__(self, rows: list[dict], cfg) -> None:
        self.rows = rows
        self.rate = ratio_for(cfg, "kl") * cfg.micro_batch_size  # general rows per micro-batch, on average
        self.weight = cfg.preserve_weight
        self.seed = cfg.seed
        self._step, self._micro = -1, 0
        self._sum, self._count = 0.0, 0
        self._order: tuple[int, list[int]] = (-1, [])  # (pass over the rows, its seeded order)
        # hidden state t predicts token t+1: a row is scored at t where token t+1 is an answer token
        self._scored = [[t for t in range(len(r["input_ids"]) - 1) if r["labels"][t + 1] != -100] for r in rows]
        self._base: dict[int, object] = {}  # row index -> the base's last hidden states at its scored positions

    def batch(self, step: int, micro: int, accumulation: int) -> list[int]:
        """The row indices for micro-batch ``micro`` of optimizer step ``step``: a function of the two only.

        Micro-batch m takes rows [floor(m x rate), floor((m + 1) x rate)) of a seeded order that is
        drawn anew for each pass over the rows; with a rate below 1 some micro-batches take none.
        """
        m = step * accumulation + micro
        out = []
        for k in range(math.floor(m * self.rate), math.floor((m + 1) * self.rate)):
            epoch, at = divmod(k, len(self.rows))
            if self._order[0] != epoch:
                self._order = (epoch, random.Random(f"{self.seed}:{epoch}").sample(range(len(self.rows)), len(self.rows)))
            out.append(self._order[1][at])
        return out

    def _hidden(self, decoder, picked: list[int], device):
        """The last hidden states at the scored positions of rows ``picked``, packed into one row."""
        import torch

        ids, positions, at, offset = [], [], [], 0
        for i in picked:
            row = self.rows[i]
            ids += row["input_ids"]
            positions += range(len(row["input_ids"]))
            at += [offset + t for t in self._scored[i]]
            offset += len(row["input_ids"])
        out = decoder(input_ids=torch.tensor([ids], device=device), position_ids=torch.tensor([positions], device=device),
                      use_cache=False).last_hidden_state
        return out[0, torch.tensor(at, device=device)]

    def loss(self, model, picked: list[int]):
        """Mean per-token KL(base || model) over the answer tokens of rows ``picked``."""
        import torch

        device = next(model.parameters()).device
        inner = model.get_base_model()
        decoder, head = inner.get_decoder(), inner.get_output_embeddings()
        with torch.no_grad(), model.disable_adapter(), clean_embeddings(inner):
            for i in picked:
                if i not in self._base:
                    self._base[i] = self._hidden(decoder, [i], device).detach()
            base = torch.log_softmax(head(torch.cat([self._base[i] for i in picked])).float(), dim=-1)
        with clean_embeddings(inner):
            tuned = torch.log_softmax(head(self._hidden(decoder, picked, device)).float(), dim=-1)
        return torch.nn.functional.kl_div(tuned, base, log_target=True, reduction="batchmean")

    def after_task_step(self, trainer, model) -> None:
        step = trainer.state.global_step
        if step != self._step:
            self._step, self._micro = step, 0
        accumulation = trainer.current_gradient_accumulation_steps
        picked = self.batch(step, self._micro, trainer.args.gradient_accumulation_steps)
        self._micro += 1
        if not picked:
            return
        with trainer.accelerator.autocast():  # the mixed precision the task's forward runs in (accelerate wraps it)
            kl = self.loss(model, picked)
        trainer.accelerator.backward(self.weight * kl / accumulation)
        self._sum += float(kl.detach())
        self._count += 1

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs and self._count:
            logs["preserve_kl"] = round(self._sum / self._count, 6)
            self._sum, self._count = 0.0, 0


@contextlib.contextmanager
def clean_embeddings(model):
    """The input embeddings in eval mode, so NEFTune's noise (which applies only in training mode) stays off the
    general rows: the KL compares model and base on the text as it is."""
    embed = model.get_input_embeddings()
    was = embed.training
    embed.train(False)
    try:
        yield
    finally:
        embed.train(was)


def attach_kl(trainer, rows: list[dict], cfg) -> KLToBase:
    """Add the KL term to every training micro-batch of ``trainer`` (after its own backward)."""
    term = KLToBase(rows, cfg)
    step = trainer.training_step

    def training_step(model, inputs, *args, **kwargs):
        loss = step(model, inputs, *args, **kwargs)
        term.after_task_step(trainer, model)
        return loss

    trainer.training_step = training_step
    trainer.callback_handler.callbacks.insert(0, term)  # before MetricsLog writes the row it adds to
    return term
