"""The ``preserve: kl`` term (train/preserve.py has the why): KL(base || model) on general rows, per micro-batch."""
from __future__ import annotations

import contextlib
import math
import random

from transformers import TrainerCallback

from ..patches.prompt_cache import virtual_positions
from . import distributed
from .preserve import ratio_for


class KLToBase(TrainerCallback):
    """The ``preserve: kl`` term on general rows: by default a second forward and backward per micro-batch,
    after the task's; with ``preserve_pack`` in the task's own; with several processes (DDP) a forward of
    its own added to the task's loss before the one backward.

    Packed: a padding-free micro-batch is one row holding its examples side by side, each attending
    only to itself (patches/varlen.py); the general rows picked for it join that row as more examples
    with no labels, so the task loss does not see them, and one forward and one backward serve both
    terms. The decoder's last hidden states at the general rows' answer positions are caught on their
    way to the LM head. Where a micro-batch cannot take them (padded batches, attention across
    examples, NEFTune's noise, which would reach them too) the separate path runs: the same sum of
    gradients either way (tests/test_preserve.py), rounded differently in bf16.

    Under DDP a second backward would find gradients already reduced across processes (the first one's
    all-reduce), so the term's forward (through the model itself, not the DDP wrapper) joins the task's
    loss and the one backward reduces both (the joint path). Each process takes its own general rows: the
    micro-batch of rank r is numbered as micro-batch r of a one-process run with accumulation x processes,
    so the run takes the same rows per step as that run would (tests/test_distributed.py).

    Installed by :func:`attach_kl`; as a callback it adds ``preserve_kl`` to the logged rows.
    The base never changes, so its last hidden states on a row are computed once (with the
    adapter off) and kept; each use then costs the base only its output layer, not a forward.
    A model with no adapter to turn off (full fine-tuning, bottleneck adapters) is snapshotted
    before its first step instead (:meth:`snapshot`): every row's last hidden states and a frozen
    copy of the output layer, which full fine-tuning would otherwise move.
    """

    def __init__(self, rows: list[dict], cfg, rank: int = 0, world: int = 1) -> None:
        self.rows = rows
        self.rank, self.world = rank, world
        self.rate = ratio_for(cfg, "kl") * cfg.micro_batch_size  # general rows per micro-batch, on average
        self.weight = cfg.preserve_weight
        self.warmup = getattr(cfg, "preserve_warmup", 0.0)  # share of the steps over which the weight rises from 0
        self.seed = cfg.seed
        # the general rows may join a micro-batch's packed row only where each example attends to itself alone
        self.packable = (getattr(cfg, "preserve_pack", False) and getattr(cfg, "padding_free", False)
                         and getattr(cfg, "per_example_attention", False) and not getattr(cfg, "neftune_noise_alpha", 0))
        self._armed = None  # (rows, their positions in the packed row) while a packed micro-batch trains
        self._extra = None  # the term's share of the loss the micro-batch returned (taken out again for the logs)
        self._step, self._micro = -1, 0
        self._now = self.weight  # the weight at the step training now
        self._sum, self._count = 0.0, 0
        self._order: tuple[int, list[int]] = (-1, [])  # (pass over the rows, its seeded order)
        # hidden state t predicts token t+1: a row is scored at t where token t+1 is an answer token
        self._scored = [[t for t in range(len(r["input_ids"]) - 1) if r["labels"][t + 1] != -100] for r in rows]
        self._base: dict[int, object] = {}  # row index -> the base's last hidden states at its scored positions
        self._head = None  # a snapshotted base's output layer (weight, bias); None: the adapter turns off

    def batch(self, step: int, micro: int, accumulation: int) -> list[int]:
        """The row indices for micro-batch ``micro`` of optimizer step ``step``: a function of the two only.

        Micro-batch m takes rows [floor(m x rate), floor((m + 1) x rate)) of a seeded order that is
        drawn anew for each pass over the rows; with a rate below 1 some micro-batches take none. With
        several processes this process's micro-batches are every ``world``-th, from its rank.
        """
        m = (step * accumulation + micro) * self.world + self.rank
        out = []
        for k in range(math.floor(m * self.rate), math.floor((m + 1) * self.rate)):
            epoch, at = divmod(k, len(self.rows))
            if self._order[0] != epoch:
                self._order = (epoch, random.Random(f"{self.seed}:{epoch}").sample(range(len(self.rows)), len(self.rows)))
            out.append(self._order[1][at])
        return out

    def _row_of(self, picked: list[int], offset: int = 0) -> tuple[list, list, list, list]:
        """Rows ``picked`` side by side as one packed row starting at ``offset``: token ids, positions (restarting
        at 0 for each row), where their scored positions land, and where each row ends."""
        ids, positions, at, ends = [], [], [], []
        for i in picked:
            row = self.rows[i]["input_ids"]
            at += [offset + len(ids) + t for t in self._scored[i]]
            ids += row
            positions += range(len(row))
            ends.append(offset + len(ids))
        return ids, positions, at, ends

    def _hidden(self, decoder, picked: list[int], device):
        """The last hidden states at the scored positions of rows ``picked``, packed into one row."""
        import torch

        ids, positions, at, _ = self._row_of(picked)
        out = decoder(input_ids=torch.tensor([ids], device=device), position_ids=torch.tensor([positions], device=device),
                      use_cache=False).last_hidden_state
        return out[0, torch.tensor(at, device=device)]

    def snapshot(self, model, autocast) -> None:
        """The base of a model with no adapter to turn off: this model as it is now, before its first step (a
        resumed run loads its checkpoint later, inside ``Trainer.train``), in the precision training runs in."""
        import torch

        inner = _inner(model)
        was = model.training
        model.eval()  # no dropout in the reference
        try:
            with torch.no_grad(), autocast, clean_embeddings(inner):
                device = next(model.parameters()).device
                for i in range(len(self.rows)):
                    self._base[i] = self._hidden(inner.get_decoder(), [i], device).detach()
        finally:
            model.train(was)
        # copied once, in the hidden states' precision, so no KL step casts the whole vocabulary matrix again
        dtype = self._base[0].dtype if self._base else None
        head = inner.get_output_embeddings()
        self._head = tuple(None if p is None else p.detach().to(dtype=dtype or p.dtype, copy=True)
                           for p in (head.weight, getattr(head, "bias", None)))

    def _base_logprobs(self, model, picked: list[int], device):
        """The base's next-token log-probabilities at the scored positions of rows ``picked``."""
        import torch

        if self._head is not None:  # snapshotted
            return torch.log_softmax(torch.nn.functional.linear(torch.cat([self._base[i] for i in picked]),
                                                                *self._head).float(), dim=-1)
        inner = model.get_base_model()
        decoder, head = inner.get_decoder(), inner.get_output_embeddings()
        with torch.no_grad(), model.disable_adapter(), clean_embeddings(inner):
            for i in picked:
                if i not in self._base:
                    self._base[i] = self._hidden(decoder, [i], device).detach()
            return torch.log_softmax(head(torch.cat([self._base[i] for i in picked])).float(), dim=-1)

    def _kl(self, model, picked: list[int], hidden):
        """Mean per-token KL(base || model), from the model's last hidden states ``hidden`` at the scored positions."""
        import torch

        base = self._base_logprobs(model, picked, hidden.device)
        tuned = torch.log_softmax(_inner(model).get_output_embeddings()(hidden).float(), dim=-1)
        return torch.nn.functional.kl_div(tuned, base, log_target=True, reduction="batchmean")

    def loss(self, model, picked: list[int]):
        """Mean per-token KL(base || model) over the answer tokens of rows ``picked``, from their own forward."""
        device = next(model.parameters()).device
        virtual = virtual_positions(model)
        if virtual is not None:
            return self._kl_through_virtual_tokens(model, picked, device, virtual)
        inner = _inner(model)
        with clean_embeddings(inner):
            hidden = self._hidden(inner.get_decoder(), picked, device)
        return self._kl(model, picked, hidden)

    def _kl_through_virtual_tokens(self, model, picked: list[int], device, virtual: int):
        """Prompt and prefix tuning: what they learn lives in front of the text (virtual tokens, or key/value
        prefixes in every layer), which the decoder alone never sees, so the tuned side is the peft model's
        own forward, one row at a time (these methods train on padded rows, never packed ones), its logits
        ``virtual`` positions late (prompt tuning's virtual tokens come first). The base side is the decoder
        with nothing in front, as for LoRA."""
        import torch

        tuned = []
        with clean_embeddings(_inner(model)):
            for i in picked:
                ids = self.rows[i]["input_ids"]
                logits = model(input_ids=torch.tensor([ids], device=device),
                               attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device)).logits[0]
                tuned.append(logits[torch.tensor(self._scored[i], device=device) + virtual])
        tuned = torch.log_softmax(torch.cat(tuned).float(), dim=-1)
        base = self._base_logprobs(model, picked, device)
        return torch.nn.functional.kl_div(tuned, base, log_target=True, reduction="batchmean")

    def weight_at(self, step: int, total: int) -> float:
        """The term's weight at optimizer step ``step`` of ``total``: ``preserve_weight``, reached linearly over
        the first ``preserve_warmup`` share of the steps."""
        if self.warmup <= 0 or total <= 0:
            return self.weight
        return self.weight * min(1.0, step / (self.warmup * total))

    def next_rows(self, trainer) -> list[int]:
        """The general rows of the micro-batch about to train (counts the micro-batches of each step); none
        while the term's weight is still 0."""
        step = trainer.state.global_step
        if step != self._step:
            self._step, self._micro = step, 0
        picked = self.batch(step, self._micro, trainer.args.gradient_accumulation_steps)
        self._micro += 1
        self._now = self.weight_at(step, trainer.state.max_steps)
        return picked if self._now > 0 else []

    def pack(self, inputs, picked: list[int]):
        """``inputs`` with the general rows ``picked`` appended to its packed row as unlabelled examples, and
        their scored positions in it; None where the micro-batch is not one packed row strop knows the keys of."""
        import torch

        ids = inputs.get("input_ids")
        per_token = ("input_ids", "position_ids", "labels", "seq_idx")
        if (not self.packable or ids is None or ids.dim() != 2 or ids.shape[0] != 1
                or "position_ids" not in inputs or "labels" not in inputs
                or any(k not in per_token + PACK_SIDE_KEYS for k in inputs)):
            return None
        length = ids.shape[1]
        new_ids, positions, at, ends = self._row_of(picked, offset=length)
        device = ids.device

        def extend(key, tail):
            return torch.cat([inputs[key], torch.tensor([tail], dtype=inputs[key].dtype, device=device)], dim=1)

        out = dict(inputs)
        out["input_ids"] = extend("input_ids", new_ids)
        out["position_ids"] = extend("position_ids", list(positions))
        out["labels"] = extend("labels", [-100] * len(new_ids))
        if "seq_idx" in inputs:
            first = int(inputs["seq_idx"].max()) + 1 if length else 0
            out["seq_idx"] = extend("seq_idx", [first + k for k, i in enumerate(picked) for _ in self.rows[i]["input_ids"]])
        for key in ("cu_seq_lens_q", "cu_seq_lens_k"):
            if key in inputs:
                out[key] = torch.cat([inputs[key], torch.tensor(ends, dtype=inputs[key].dtype, device=inputs[key].device)])
        for key in ("max_length_q", "max_length_k"):
            if key in inputs:
                out[key] = max(int(inputs[key]), *(len(self.rows[i]["input_ids"]) for i in picked))
        return out, torch.tensor(at, device=device)

    def after_task_step(self, trainer, model, picked: list[int]) -> None:
        """The separate path: the term's own forward and backward after the task's."""
        if not picked:
            return
        with trainer.accelerator.autocast():  # the mixed precision the task's forward runs in (accelerate wraps it)
            kl = self.loss(model, picked)
        trainer.accelerator.backward(self._now * kl / trainer.current_gradient_accumulation_steps)
        self._note(kl)

    def add_to(self, trainer, loss, kl, num_items_in_batch):
        """The packed and joint paths: ``loss`` (the task's) plus the weighted term ``kl``, scaled as the
        Trainer will scale the sum for gradient accumulation. Under DDP the Trainer multiplies a task loss
        normalised by the step's token count over all processes by their number, since DDP averages the
        gradients; the term is a mean over its own tokens, so the average alone is right for it."""
        scaled = getattr(trainer, "loss_is_scaled_for_ga", None)  # newer transformers set it
        if scaled is None:  # the Trainer's own test (Trainer.training_step)
            scaled = ((getattr(trainer, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None)
                      or getattr(trainer, "compute_loss_func", None) is not None)
        accumulation = trainer.current_gradient_accumulation_steps
        term = self._now * kl / (accumulation if scaled else 1)
        self._extra = float(self._now * kl.detach() / accumulation)  # what training_step's returned loss holds of it
        self._note(kl)
        return loss + term

    def _note(self, kl) -> None:
        self._sum += float(kl.detach())
        self._count += 1

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        total, count = self._sum, self._count
        if self.world > 1:  # every process logs the same rows (Trainer.log runs on all), so each joins the sum
            import torch
            import torch.distributed as dist

            both = torch.tensor([total, float(count)], dtype=torch.float64, device=args.device)
            dist.all_reduce(both)
            total, count = float(both[0]), int(both[1])
        if count:
            logs["preserve_kl"] = round(total / count, 6)
        self._sum, self._count = 0.0, 0


def _switchable(model) -> bool:
    """Whether the base is ``model`` with its adapter turned off (peft); else it is snapshotted."""
    return hasattr(model, "disable_adapter")


def _inner(model):
    """The transformers model under a peft wrapper, or the model itself (full fine-tuning, bottleneck adapters)."""
    return model.get_base_model() if _switchable(model) else model


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


PACK_SIDE_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "use_cache")


def attach_kl(trainer, rows: list[dict], cfg) -> KLToBase:
    """Add the KL term to every training micro-batch of ``trainer``: packed into its row where it can be,
    else as a second backward after the task's."""
    world = distributed.world()
    term = KLToBase(rows, cfg, world.rank, world.size)
    if not _switchable(trainer.model):  # no adapter to turn off: keep the model as it starts
        term.snapshot(trainer.model, trainer.accelerator.autocast())
    step, compute_loss = trainer.training_step, trainer.compute_loss
    unwrap = trainer.accelerator.unwrap_model  # the Trainer passes the DDP wrapper; the term needs the model

    def training_step(model, inputs, *args, **kwargs):
        picked = term.next_rows(trainer)
        packed = term.pack(inputs, picked) if picked else None
        if packed is None and (not picked or term.world == 1):  # the separate path
            loss = step(model, inputs, *args, **kwargs)
            term.after_task_step(trainer, unwrap(model), picked)
            return loss
        term._armed, term._extra = (picked, None if packed is None else packed[1]), None
        try:
            loss = step(model, inputs if packed is None else packed[0], *args, **kwargs)
        finally:
            term._armed = None
        return loss - term._extra if term._extra is not None else loss  # the logs keep the task's loss

    def compute_loss_with_kl(model, inputs, return_outputs=False, num_items_in_batch=None):
        if term._armed is None or not model.training:
            return compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        picked, at = term._armed
        inner = unwrap(model)
        caught = {}

        def catch(module, args, output):  # returns None: the output goes on unchanged
            caught["hidden"] = output[0]

        handle = _inner(inner).get_decoder().register_forward_hook(catch) if at is not None else None
        try:
            out = compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        finally:
            if handle is not None:
                handle.remove()
        loss = out[0] if return_outputs else out
        # packed: the general rows rode in the task's row; joint: their own forward, outside the DDP wrapper
        # and so outside the autocast accelerate wraps the model's forward in (the separate path's too)
        if at is None:
            with trainer.accelerator.autocast():
                kl = term.loss(inner, picked)
        else:
            kl = term._kl(inner, picked, caught["hidden"][0, at])
        loss = term.add_to(trainer, loss, kl, num_items_in_batch)
        return (loss, *out[1:]) if return_outputs else loss

    trainer.training_step = training_step
    trainer.compute_loss = compute_loss_with_kl
    trainer.callback_handler.callbacks.insert(0, term)  # before MetricsLog writes the row it adds to
    return term
