"""The canonical records every loader produces and every later stage consumes."""
from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant", "tool")

# What a file holds. SFT trains on ``sft`` only; the others need their own trainer.
KINDS = {
    "sft": "conversations to imitate",
    "preference": "paired preference (prompt, chosen, rejected)",
    "unpaired": "unpaired preference (a conversation with a desirable/undesirable label)",
    "text": "plain text (language modelling, no chat roles)",
    "prompt": "prompts without answers (reinforcement: a grader scores what the model writes)",
}


@dataclass
class Message:
    role: str  # one of ROLES
    content: str
    # Per-message loss weight: 0.0 means "context only, never trained on".
    weight: float = 1.0


@dataclass
class Conversation:
    """One example: an ordered chat plus where it came from.

    ``source`` and ``line`` let every later error or report point back at the
    exact row of the user's file (line is 1-based; for JSON arrays and saved
    Hugging Face datasets it is the index of the element plus one, and
    ``line_kind`` says which).

    Preference rows keep the prompt plus the *chosen* answer in ``messages``
    (so every length, duplicate and PII check applies to them unchanged) and
    the rejected answer in ``rejected``; unpaired rows carry ``label``.
    ``row`` is the parsed source row, so clean/split can write rows back in
    the user's own format.
    """

    messages: list[Message]
    source: str = ""
    line: int = 0
    line_kind: str = "line"  # "line" for JSONL/CSV rows, "item" for JSON arrays
    meta: dict = field(default_factory=dict)
    rejected: list[Message] | None = None
    label: bool | None = None
    row: dict | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        if self.line_kind == "item":
            return f"{self.source}[{self.line - 1}]"
        return f"{self.source}:{self.line}"

    def as_dicts(self) -> list[dict]:
        return [{"role": m.role, "content": m.content} for m in self.messages]

    @property
    def prompt_messages(self) -> list[Message]:
        """Everything before the final assistant turn (what a model is asked); all of a prompt-only row."""
        answers = [i for i, m in enumerate(self.messages) if m.role == "assistant"]
        return self.messages[:answers[-1]] if answers else list(self.messages)

    @property
    def reference(self) -> str:
        """The final assistant answer (what a model should say); empty for a prompt-only row."""
        answers = [m for m in self.messages if m.role == "assistant"]
        return answers[-1].content if answers else ""

    def pair(self) -> "PreferencePair":
        """The preference view of a paired row (see ``Dataset.pairs``)."""
        if self.rejected is None:
            raise ValueError(f"{self.where}: not a preference row")
        prompt = self.prompt_messages
        return PreferencePair(prompt, self.messages[len(prompt):], list(self.rejected), self.where)


@dataclass
class PreferencePair:
    """What a DPO-style trainer consumes: one prompt, a better and a worse continuation."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    where: str = ""


@dataclass
class Problem:
    """One row that could not be used, with a stable reason code for counting."""

    where: str
    code: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason} [{self.code}]"
