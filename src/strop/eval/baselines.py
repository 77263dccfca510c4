"""The prompt-engineering baseline: the base model, a system prompt and k examples.

The examples come from the run's *training* rows (after the same seeded
validation split training used), so the baseline sees exactly the knowledge
the fine-tune saw, and never an eval example. They are given as real chat
turns, which is how a chat model best takes in demonstrations.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..core.errors import StropError
from ..data.records import Conversation, Message

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. The conversation starts with example exchanges that show exactly how you "
    "answer: use the same facts, names, style and length as in those examples, and answer the last question "
    "the same way."
)


@dataclass
class FewShot:
    system_prompt: str
    examples: list[Conversation]

    def messages(self) -> list[Message]:
        """System prompt plus the demonstrations, weight 0 so perplexity never scores them."""
        out = [Message("system", self.system_prompt, 0.0)] if self.system_prompt else []
        for ex in self.examples:
            out += [Message(m.role, m.content, 0.0) for m in ex.messages if m.role != "system"]
        return out

    def wrap(self, conv: Conversation) -> Conversation:
        """The eval conversation with the few-shot context in front (its own system turn dropped)."""
        own = [m for m in conv.messages if m.role != "system"]
        return Conversation([*self.messages(), *own], conv.source, conv.line, conv.line_kind, conv.meta)

    def text(self) -> str:
        """The exact prompt prefix, for the report."""
        return "\n".join(f"{m.role}: {m.content}" for m in self.messages())


def build_few_shot(train: list[Conversation], eval_convs: list[Conversation], k: int, seed: int,
                   system_prompt: str | None = None) -> FewShot:
    """k training conversations drawn with ``seed``, skipping any whose prompt is also an eval prompt."""
    if k < 0:
        raise StropError(f"--k-shot: must be >= 0, got {k}")
    eval_prompts = {_prompt_key(c) for c in eval_convs}
    pool = [c for c in train if _prompt_key(c) not in eval_prompts]
    if k > len(pool):
        raise StropError(f"--k-shot: {k} examples asked for but the training data has {len(pool)} usable rows")
    chosen = random.Random(seed).sample(pool, k)
    return FewShot(DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt, chosen)


def _prompt_key(conv: Conversation) -> str:
    return "\n".join(m.content.strip().lower() for m in conv.prompt_messages)
