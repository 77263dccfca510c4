"""OpenAI's ``logit_bias``, ``presence_penalty`` and ``frequency_penalty``: one definition for the server's
batcher and the Python API (``strop.load(...).generate(..., logit_bias={...})``).

For each candidate token t, with count(t) the times t was generated so far in this answer (the prompt's
tokens do not count):

    score'(t) = score(t) + bias(t) - count(t) * frequency_penalty - (count(t) > 0) * presence_penalty

transformers has no processor for this: its ``RepetitionPenaltyLogitsProcessor`` divides scores and counts
the prompt's tokens too, and its ``SequenceBiasLogitsProcessor`` takes token sequences, not OpenAI's map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..core.errors import StropError

MAX_BIASED = 1024  # token ids one logit_bias may name (the server's limit too)


@dataclass(frozen=True)
class Steering:
    bias: dict[int, float] = field(default_factory=dict)
    presence: float = 0.0
    frequency: float = 0.0

    def __bool__(self) -> bool:
        return bool(self.bias or self.presence or self.frequency)


def _number(name: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise StropError(f"{name}: {value!r} is not a number from {low:g} to {high:g}")
    return float(value)


def checked(vocab: int, logit_bias=None, presence_penalty=None, frequency_penalty=None) -> Steering:
    """The Python API's arguments as a Steering, or a StropError naming the argument: token ids (ints, or
    whole numbers as strings, as OpenAI's JSON keys are) inside the vocabulary, biases from -100 to 100,
    penalties from -2 to 2."""
    bias: dict[int, float] = {}
    if logit_bias is not None and not isinstance(logit_bias, dict):
        raise StropError(f"logit_bias: a dict of token id -> -100..100, got {type(logit_bias).__name__}")
    for key, value in (logit_bias or {}).items():
        text = key.strip() if isinstance(key, str) else None
        if isinstance(key, bool) or not (isinstance(key, int) or (text and text.isdigit())):
            raise StropError(f"logit_bias: key {key!r} is not a token id (a whole number)")
        token = int(key)
        if not 0 <= token < vocab:
            raise StropError(f"logit_bias: token id {token} is outside the vocabulary (0 to {vocab - 1})")
        bias[token] = _number(f"logit_bias[{token}]", value, -100, 100)
    if len(bias) > MAX_BIASED:
        raise StropError(f"logit_bias: at most {MAX_BIASED} token ids, got {len(bias)}")
    presence = 0.0 if presence_penalty is None else _number("presence_penalty", presence_penalty, -2, 2)
    frequency = 0.0 if frequency_penalty is None else _number("frequency_penalty", frequency_penalty, -2, 2)
    return Steering(bias, presence, frequency)


def steer(logits, generated: list[int], s: Steering):
    """One row of ``logits`` steered by ``s`` given the tokens ``generated`` so far: a new float32 tensor, or
    ``logits`` itself when ``s`` changes nothing here."""
    penalised = generated and (s.presence or s.frequency)
    if not s.bias and not penalised:
        return logits
    import torch

    out = logits.float().clone()
    if s.bias:
        out[torch.tensor(list(s.bias))] += torch.tensor(list(s.bias.values()), dtype=out.dtype)
    if penalised:
        ids, counts = torch.tensor(generated).unique(return_counts=True)
        out[ids] -= counts.to(out.dtype) * s.frequency + s.presence
    return out


def processor(s: Steering, prompt_len: int):
    """A transformers LogitsProcessorList that steers each row of a ``generate`` call whose prompts are
    ``prompt_len`` tokens long. ``generate`` runs it before its sampling warpers (temperature, top-k, top-p),
    so a +100 bias selects its token even where top-k or top-p would have dropped it."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class _Steer(LogitsProcessor):
        def __call__(self, input_ids, scores):
            import torch

            rows = [steer(scores[i], input_ids[i, prompt_len:].tolist(), s) for i in range(scores.shape[0])]
            return torch.stack([r.to(scores.dtype) for r in rows])

    return LogitsProcessorList([_Steer()])
