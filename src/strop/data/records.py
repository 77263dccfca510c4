"""The canonical record every loader produces and every later stage consumes."""
from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")


@dataclass
class Message:
    role: str  # one of ROLES
    content: str
    # Per-message loss weight: 0.0 means "context only, never trained on".
    weight: float = 1.0


@dataclass
class Conversation:
    """One training example: an ordered chat plus where it came from.

    ``source`` and ``line`` let every later error or report point back at the
    exact row of the user's file (line is 1-based; for JSON arrays it is the
    index of the element plus one, and ``line_kind`` says which).
    """

    messages: list[Message]
    source: str = ""
    line: int = 0
    line_kind: str = "line"  # "line" for JSONL/CSV rows, "item" for JSON arrays
    meta: dict = field(default_factory=dict)

    @property
    def where(self) -> str:
        if self.line_kind == "item":
            return f"{self.source}[{self.line - 1}]"
        return f"{self.source}:{self.line}"

    def as_dicts(self) -> list[dict]:
        return [{"role": m.role, "content": m.content} for m in self.messages]

    @property
    def prompt_messages(self) -> list[Message]:
        """Everything before the final assistant turn (what a model is asked)."""
        last = max(i for i, m in enumerate(self.messages) if m.role == "assistant")
        return self.messages[:last]

    @property
    def reference(self) -> str:
        """The final assistant answer (what a model should say)."""
        return [m for m in self.messages if m.role == "assistant"][-1].content
