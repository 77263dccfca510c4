"""The loaded model behind `strop generate`, `strop chat`, the server and `strop.load`.

One place decides the chat template, the system prompt, stop tokens and
sampling, so the Python API, the CLI and the HTTP server answer alike.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .. import models
from ..core.errors import StropError
from . import steering
from .steering import Steering
from .templates import prompt_text

GREEDY_BELOW = 1e-5  # a temperature under this samples like argmax anyway; dividing by it overflows


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"


def _run_settings(name: str) -> dict:
    path = models.resolve(name)
    if isinstance(path, Path) and (path / "strop_run.json").is_file():
        return json.loads((path / "strop_run.json").read_text())
    return {}


class Engine:
    """A model + tokenizer with the chat conventions it was trained with."""

    def __init__(self, name: str, dtype: str = "float32", *, allow_pickle: bool = False) -> None:
        import torch

        self.name = name
        self.model, self.tok = models.load(name, dtype, models.LoadPolicy(allow_pickle=allow_pickle))
        self.system_prompt = _run_settings(name).get("system_prompt", "")
        self.lock = threading.Lock()  # generate() is not re-entrant on one model
        self._torch = torch
        self.context_length = getattr(self.model.config, "max_position_embeddings", 2048)

    # -- prompts ---------------------------------------------------------
    def prompt(self, messages: list[dict]) -> str:
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise StropError(f"messages[{i}]: needs 'role' and 'content'")
        return prompt_text(self.tok, messages, self.system_prompt)

    def encode(self, messages: list[dict]) -> list[int]:
        return self.tok(self.prompt(messages), add_special_tokens=False)["input_ids"]

    # -- generation ------------------------------------------------------
    def _gen_kwargs(self, max_new_tokens: int, temperature: float, top_p: float, steer: Steering | None = None,
                    prompt_len: int = 0) -> dict:
        sample = temperature >= GREEDY_BELOW  # a tiny temperature is greedy, as in the server (dividing overflows)
        kw = {
            "max_new_tokens": max_new_tokens,
            "do_sample": sample,
            "eos_token_id": self.tok.eos_token_id,
            "pad_token_id": self.tok.pad_token_id,
        }
        if steer:
            kw["logits_processor"] = steering.processor(steer, prompt_len)
        if sample:
            kw.update(temperature=temperature, top_p=top_p)
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        return kw

    def _steering(self, logit_bias, presence_penalty, frequency_penalty) -> Steering | None:
        if logit_bias is None and presence_penalty is None and frequency_penalty is None:
            return None
        vocab = self.model.get_input_embeddings().num_embeddings  # the server's bound too
        return steering.checked(vocab, logit_bias, presence_penalty, frequency_penalty)

    def _check_len(self, ids: list[int], max_new_tokens: int) -> int:
        if len(ids) >= self.context_length:
            raise StropError(f"prompt has {len(ids)} tokens; the model's context is {self.context_length}")
        return min(max_new_tokens, self.context_length - len(ids))

    def complete_ids(self, ids: list[int], max_new_tokens: int = 128, temperature: float = 0.0,
                     top_p: float = 1.0, seed: int | None = None, stop: list[str] | None = None,
                     logit_bias: dict | None = None, presence_penalty: float | None = None,
                     frequency_penalty: float | None = None) -> Completion:
        """Continue token ids. ``logit_bias`` (token id -> -100..100), ``presence_penalty`` and
        ``frequency_penalty`` (-2..2) act as OpenAI defines them (models/steering.py), as on the server."""
        torch = self._torch
        max_new_tokens = self._check_len(ids, max_new_tokens)
        steer = self._steering(logit_bias, presence_penalty, frequency_penalty)
        with self.lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      **self._gen_kwargs(max_new_tokens, temperature, top_p, steer, len(ids)))
        new = out[0, len(ids):].tolist()
        ended = bool(new) and new[-1] == self.tok.eos_token_id
        if ended:
            new = new[:-1]
        text, hit = _apply_stop(self.tok.decode(new, skip_special_tokens=True), stop)
        finish = "stop" if (ended or hit) else "length"
        return Completion(text, len(ids), len(new), finish)

    def chat(self, messages: list[dict], **kw) -> Completion:
        return self.complete_ids(self.encode(messages), **kw)

    def generate(self, prompt: str, **kw) -> str:
        """One user message in, the answer text out."""
        return self.chat([{"role": "user", "content": prompt}], **kw).text

    def generate_batch(self, prompts: list[list[dict]], max_new_tokens: int = 128, batch_size: int = 8) -> list[str]:
        """Greedy answers for many chats at once (left-padded batches)."""
        torch = self._torch
        answers = []
        self.tok.padding_side = "left"
        for i in range(0, len(prompts), batch_size):
            texts = [self.prompt(m) for m in prompts[i:i + batch_size]]
            enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with self.lock, torch.inference_mode():
                out = self.model.generate(**enc, **self._gen_kwargs(max_new_tokens, 0.0, 1.0))
            for row in out[:, enc["input_ids"].shape[1]:]:
                answers.append(self.tok.decode(row, skip_special_tokens=True))
        return answers

    def stream(self, messages: list[dict], max_new_tokens: int = 128, temperature: float = 0.0,
               top_p: float = 1.0, seed: int | None = None, stats: dict | None = None,
               logit_bias: dict | None = None, presence_penalty: float | None = None,
               frequency_penalty: float | None = None) -> Iterator[str]:
        """Yield text pieces as they are generated; ``stats`` receives token counts at the end."""
        from transformers import TextIteratorStreamer

        torch = self._torch
        ids = self.encode(messages)
        max_new_tokens = self._check_len(ids, max_new_tokens)
        steer = self._steering(logit_bias, presence_penalty, frequency_penalty)
        streamer = TextIteratorStreamer(self.tok, skip_prompt=True, skip_special_tokens=True, timeout=600)
        result: dict = {}

        def work():
            with self.lock, torch.inference_mode():
                if seed is not None:
                    torch.manual_seed(seed)
                try:
                    result["out"] = self.model.generate(
                        input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                        streamer=streamer, **self._gen_kwargs(max_new_tokens, temperature, top_p, steer, len(ids)))
                except Exception as exc:  # surfaced to the consumer below
                    result["error"] = exc
                    streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        for piece in streamer:
            if piece:
                yield piece
        thread.join()
        if "error" in result:
            raise result["error"]
        new = result["out"][0, len(ids):].tolist()
        ended = bool(new) and new[-1] == self.tok.eos_token_id
        if stats is not None:
            stats.update(prompt_tokens=len(ids), completion_tokens=len(new) - ended,
                         finish_reason="stop" if ended else "length")


def _apply_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    if not stop:
        return text, False
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def load(name: str, dtype: str = "float32") -> Engine:
    """The Python API: ``from strop import load; m = load("runs/demo"); m.generate("hi")``."""
    return Engine(name, dtype)
