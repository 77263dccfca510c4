"""Render conversations with the model's chat template and mark trained tokens.

Many chat templates (SmolLM2's among them) have no generation markers, so
``return_assistant_tokens_mask`` cannot be used. Instead each assistant span
is located by rendering the conversation incrementally: the text up to the
generation prompt before an assistant turn, and the text including that turn,
are both prefixes of the full rendering. Tokens whose characters fall inside
such a span (the answer and its end-of-turn token) get labels; every other
token gets -100.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import StropError
from ..models.templates import render_chat, with_system
from .records import Conversation

IGNORE = -100


@dataclass
class Rendered:
    input_ids: list[int]
    labels: list[int]
    text: str
    truncated: bool

    @property
    def n_trainable(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def _template(tok, messages: list[dict], gen: bool) -> str:
    # The template ships with the model, so it is untrusted: sandboxed, with size and time limits.
    return render_chat(tok, messages, add_generation_prompt=gen)


def assistant_spans(tok, conv: Conversation, system_prompt: str = "") -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the character spans that carry loss."""
    msgs = with_system(conv.messages, system_prompt)
    offset = len(msgs) - len(conv.messages)  # 1 when a system prompt was inserted
    full = _template(tok, msgs, gen=False)
    spans = []
    for i, m in enumerate(conv.messages):
        if m.role != "assistant" or m.weight <= 0:
            continue
        j = i + offset
        before = _template(tok, msgs[:j], gen=True)
        upto = _template(tok, msgs[: j + 1], gen=False)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise StropError(
                f"{conv.where}: the chat template does not render turn by turn as prefixes, "
                "so assistant tokens cannot be located; use prompt/completion rows"
            )
        end = len(upto.rstrip())
        if tok.eos_token and not upto[:end].endswith(tok.eos_token):
            end = len(upto)  # keep whatever the template puts after the answer
        spans.append((len(before), end))
    return full, spans


def render(tok, conv: Conversation, max_length: int, *, system_prompt: str = "", train_on_inputs: bool = False) -> Rendered:
    text, spans = assistant_spans(tok, conv, system_prompt)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = []
    for tid, (start, end) in zip(ids, offsets):
        inside = any(s <= start < e for s, e in spans) and end > start
        labels.append(tid if (inside or train_on_inputs) else IGNORE)
    truncated = len(ids) > max_length
    return Rendered(ids[:max_length], labels[:max_length], text, truncated)
