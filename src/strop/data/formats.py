"""ONE table of data formats: detector + converter to the canonical record.

Adding a format is one entry in ``FORMATS``, a fixture file and a test. A
converter raises ``RowError`` with a short reason; the loader adds file:line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .records import Message


class RowError(ValueError):
    """A row that does not fit its format; the message is the reason only."""


@dataclass(frozen=True)
class Format:
    name: str
    detect: Callable[[dict], bool]
    convert: Callable[[dict], list[Message]]
    summary: str


# ShareGPT and LLaMA-Factory role names -> canonical roles.
SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "system": "system", "function_call": "assistant", "observation": "tool", "tool": "tool",
}
OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


def _text_of(content, where: str) -> str:
    """Plain text from a string or a list of typed parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text", part.get("value")), str):
                parts.append(part.get("text", part.get("value")))
            else:
                raise RowError(f"{where}: only text content parts are supported")
        return "".join(parts)
    raise RowError(f"{where}: content must be text, got {type(content).__name__}")


def _weight(msg: dict) -> float:
    w = msg.get("weight", msg.get("loss_weight", 1.0))
    if isinstance(w, bool) or not isinstance(w, (int, float)):
        raise RowError(f"weight must be a number, got {w!r}")
    return float(w)


def _messages(row: dict) -> list[Message]:
    msgs = row["messages"]
    if not isinstance(msgs, list):
        raise RowError("field 'messages' must be a list")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise RowError(f"messages[{i}] must be an object")
        role = m.get("role")
        if role not in OPENAI_ROLES:
            raise RowError(f"messages[{i}].role {role!r} is not one of {', '.join(OPENAI_ROLES)}")
        if "content" not in m:
            raise RowError(f"messages[{i}] has no 'content'")
        out.append(Message(OPENAI_ROLES[role], _text_of(m["content"], f"messages[{i}].content"), _weight(m)))
    return out


def _alpaca(row: dict) -> list[Message]:
    for key in ("instruction", "output"):
        if not isinstance(row.get(key), str):
            raise RowError(f"field {key!r} must be text")
    out = []
    if isinstance(row.get("system"), str) and row["system"].strip():
        out.append(Message("system", row["system"]))
    for i, pair in enumerate(row.get("history") or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RowError(f"history[{i}] must be a [question, answer] pair")
        out += [Message("user", pair[0]), Message("assistant", pair[1])]
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise RowError("field 'input' must be text")
    prompt = row["instruction"] + ("\n\n" + extra if extra.strip() else "")
    out += [Message("user", prompt), Message("assistant", row["output"])]
    return out


def _sharegpt(row: dict) -> list[Message]:
    turns = row["conversations"]
    if not isinstance(turns, list):
        raise RowError("field 'conversations' must be a list")
    out = []
    if isinstance(row.get("system"), str) and row["system"].strip():
        out.append(Message("system", row["system"]))
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise RowError(f"conversations[{i}] must be an object")
        role = t.get("from", t.get("role"))
        if role not in SHAREGPT_ROLES:
            raise RowError(f"conversations[{i}].from {role!r} is not one of {', '.join(SHAREGPT_ROLES)}")
        value = t.get("value", t.get("content"))
        out.append(Message(SHAREGPT_ROLES[role], _text_of(value, f"conversations[{i}].value")))
    return out


def _prompt_completion(row: dict) -> list[Message]:
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, list) and isinstance(completion, list):
        return _messages({"messages": prompt + completion})
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise RowError("fields 'prompt' and 'completion' must both be text or both be message lists")
    return [Message("user", prompt), Message("assistant", completion)]


FORMATS: dict[str, Format] = {
    "messages": Format("messages", lambda r: "messages" in r, _messages, "OpenAI chat: {messages: [{role, content}]}"),
    "sharegpt": Format("sharegpt", lambda r: "conversations" in r, _sharegpt, "ShareGPT: {conversations: [{from, value}]}"),
    "alpaca": Format("alpaca", lambda r: "instruction" in r and "output" in r, _alpaca, "Alpaca: {instruction, input, output}"),
    "prompt_completion": Format(
        "prompt_completion", lambda r: "prompt" in r and "completion" in r, _prompt_completion, "TRL: {prompt, completion}"
    ),
}


def detect(row: object) -> Format | None:
    if not isinstance(row, dict):
        return None
    for fmt in FORMATS.values():
        if fmt.detect(row):
            return fmt
    return None
