"""Trainer callbacks: a readable progress bar, the metrics.jsonl log and task metrics during training."""
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
        row = {"step": state.global_step, "max_steps": state.max_steps, "epoch": round(state.epoch or 0.0, 4),
               "time_s": round(time.monotonic() - self.start, 2)}
        row.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


def _decoder_layers(model) -> list:
    """The repeated blocks transformers can checkpoint, in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def checkpointed_layers(model) -> int:
    """Decoder layers that recompute in backward right now."""
    return sum(1 for layer in _decoder_layers(model) if layer.gradient_checkpointing)


class CheckpointFirstLayers(TrainerCallback):
    """With gradient checkpointing on, only the first ``count`` decoder layers recompute in backward;
    the others keep their activations (``checkpoint_layers``: memory traded back for speed).
    transformers' ``every_n_layers`` can only checkpoint 1/1, 1/2, 1/3 ... of the layers."""

    def __init__(self, count: int) -> None:
        self.count = count

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from ..plan.estimate import check_checkpoint_layers

        if not args.gradient_checkpointing or model is None:
            return
        layers = _decoder_layers(model)
        check_checkpoint_layers(self.count, len(layers))  # a model without config.json is sized only here
        for i, layer in enumerate(layers):
            layer.gradient_checkpointing = i < self.count


class AdaptiveThreads(TrainerCallback):
    """Between steps, size torch's CPU thread pool to the cores other programs leave free (strop/core/threads.py)."""

    def __init__(self, sizer) -> None:
        self.sizer = sizer

    def on_train_begin(self, args, state, control, **kwargs):
        self.sizer.step(force=True)

    def on_step_begin(self, args, state, control, **kwargs):
        self.sizer.step()

    def on_train_end(self, args, state, control, **kwargs):
        self.sizer.restore()


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


class GenerationMetrics(TrainerCallback):
    """At each evaluation (or every ``every`` steps), answer held-out prompts greedily and log task metrics.

    The row goes straight to metrics.jsonl ({"step", "epoch", "gen_bleu", "gen_rougeL", ...}): by the time
    ``on_evaluate`` runs the Trainer has already logged its eval metrics, so there is no log call to join.
    The scores are also added to the evaluation's metrics (``eval_gen_rougeL`` ...), which the Trainer reads
    after this hook to keep the best checkpoint and early stopping reads in its own (``best_metric``).
    """

    def __init__(self, path: Path, tok, convs: list, system_prompt: str = "", every: int = 0,
                 max_new_tokens: int = 64, batch_size: int = 8) -> None:
        from ..models.templates import prompt_text

        self.path = path
        self.tok = tok
        self.prompts = [prompt_text(tok, c.prompt_messages, system_prompt) for c in convs]
        self.references = [c.reference for c in convs]
        self.every = every
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.last_step = -1
        self.last_scores: dict = {}

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if self.every == 0:
            self._run(state, model)
            if metrics is not None and self.last_step == state.global_step:
                metrics.update({f"eval_{k}": v for k, v in self.last_scores.items()})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self._run(state, model)

    def _run(self, state, model) -> None:
        from .gen_metrics import score

        if not state.is_world_process_zero or model is None or state.global_step == self.last_step:
            return
        t0 = time.monotonic()
        answers = self.generate(model)
        self.last_step, self.last_scores = state.global_step, score(answers, self.references)
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **self.last_scores,
               "gen_samples": len(answers), "gen_wall_s": round(time.monotonic() - t0, 2)}
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    def generate(self, model) -> list[str]:
        """Greedy answers in left-padded batches; the model and tokenizer are left as they were found."""
        import torch

        was_training, side = model.training, self.tok.padding_side
        model.eval()
        self.tok.padding_side = "left"
        answers: list[str] = []
        try:
            for i in range(0, len(self.prompts), self.batch_size):
                enc = self.tok(self.prompts[i:i + self.batch_size], return_tensors="pt", padding=True,
                               add_special_tokens=False).to(model.device)
                with torch.inference_mode():
                    out = model.generate(**enc, do_sample=False, max_new_tokens=self.max_new_tokens, use_cache=True,
                                         pad_token_id=self.tok.pad_token_id, temperature=None, top_p=None, top_k=None)
                answers += [a.strip() for a in self.tok.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                                                     skip_special_tokens=True)]
        finally:
            self.tok.padding_side = side
            model.train(was_training)
        return answers


def generation_callbacks(cfg, tok, metrics_path: Path) -> list[TrainerCallback]:
    """[GenerationMetrics] when ``eval_generate_samples`` is set, else []."""
    if not cfg.eval_generate_samples:
        return []
    from .gen_metrics import GEN_MAX_NEW_TOKENS, heldout_conversations

    return [GenerationMetrics(metrics_path, tok, heldout_conversations(cfg), cfg.system_prompt,
                              cfg.eval_generate_every, GEN_MAX_NEW_TOKENS)]
