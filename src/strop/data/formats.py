"""ONE table of data formats: detector + converter to the canonical record.

Adding a format is one entry in ``FORMATS``, a fixture file and a test. A
converter raises ``RowError`` with a reason and a stable code; the loader adds
file:line. Order matters: the first detector that accepts a row wins, so the
more specific formats (preference, unpaired) come before the general ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .records import Message


class RowError(ValueError):
    """A row that does not fit its format; the message is the reason only."""

    def __init__(self, message: str, code: str = "invalid_row") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Parsed:
    messages: list[Message]
    rejected: list[Message] | None = None
    label: bool | None = None


@dataclass(frozen=True)
class Format:
    name: str
    detect: Callable[[dict], bool]
    convert: Callable[[dict], Parsed]
    summary: str
    kind: str = "sft"  # see records.KINDS


# ShareGPT and LLaMA-Factory role names -> canonical roles.
SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
    "system": "system", "function_call": "assistant", "observation": "tool", "tool": "tool", "function": "tool",
}
OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


def _text_of(content, where: str) -> str:
    """Plain text from a string or a list of typed parts ({"type": "text", "text"|"value": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type", "text") != "text":
                raise RowError(f"{where}: only text content parts are supported", "wrong_type")
            text = part.get("text", part.get("value"))
            if not isinstance(text, str):
                raise RowError(f"{where}: a text part needs a 'text' string", "wrong_type")
            parts.append(text)
        return "".join(parts)
    if content is None:
        raise RowError(f"{where} is missing", "missing_field")
    raise RowError(f"{where}: content must be text, got {type(content).__name__}", "wrong_type")


def _weight(msg: dict) -> float:
    w = msg.get("weight", msg.get("loss_weight", 1.0))
    if isinstance(w, bool) or not isinstance(w, (int, float)):
        raise RowError(f"weight must be a number, got {w!r}", "wrong_type")
    return float(w)


def _message_list(msgs, field: str) -> list[Message]:
    if not isinstance(msgs, list):
        raise RowError(f"field {field!r} must be a list", "wrong_type")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise RowError(f"{field}[{i}] must be an object", "wrong_type")
        role = m.get("role")
        if role not in OPENAI_ROLES:
            raise RowError(f"{field}[{i}].role {role!r} is not one of {', '.join(OPENAI_ROLES)}", "unknown_role")
        if "content" not in m:
            raise RowError(f"{field}[{i}] has no 'content'", "missing_field")
        out.append(Message(OPENAI_ROLES[role], _text_of(m["content"], f"{field}[{i}].content"), _weight(m)))
    return out


def _sharegpt_turns(turns, field: str) -> list[Message]:
    if isinstance(turns, dict):  # a single chosen/rejected turn
        turns = [turns]
    if not isinstance(turns, list):
        raise RowError(f"field {field!r} must be a list", "wrong_type")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise RowError(f"{field}[{i}] must be an object", "wrong_type")
        role = t.get("from", t.get("role"))
        if role not in SHAREGPT_ROLES:
            raise RowError(f"{field}[{i}].from {role!r} is not one of {', '.join(SHAREGPT_ROLES)}", "unknown_role")
        value = t.get("value", t.get("content"))
        out.append(Message(SHAREGPT_ROLES[role], _text_of(value, f"{field}[{i}].value"), _weight(t)))
    return out


def _system(row: dict) -> list[Message]:
    s = row.get("system")
    if s is not None and not isinstance(s, str):
        raise RowError("field 'system' must be text", "wrong_type")
    return [Message("system", s)] if s and s.strip() else []


def _turns(value, field: str) -> list[Message]:
    """A completion given as text, one message, or a list in either dialect."""
    if isinstance(value, str):
        return [Message("assistant", value)]
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value and isinstance(value[0], dict) and "from" in value[0]:
        return _sharegpt_turns(value, field)
    return _message_list(value, field)


def _prompt_of(value, field: str) -> list[Message]:
    if isinstance(value, str):
        return [Message("user", value)]
    if isinstance(value, list) and value and isinstance(value[0], dict) and "from" in value[0]:
        return _sharegpt_turns(value, field)
    return _message_list(value, field)


def _ends_with_user(row: dict) -> bool:
    """A reinforcement prompt: chat messages with no answer yet (the grader scores the model's)."""
    msgs = row.get("messages")
    return (isinstance(msgs, list) and bool(msgs) and all(isinstance(m, dict) for m in msgs)
            and msgs[-1].get("role") == "user" and not any(m.get("role") == "assistant" for m in msgs))


def _messages(row: dict) -> Parsed:
    return Parsed(_system(row) + _message_list(row["messages"], "messages"))


def _alpaca_prompt(row: dict) -> list[Message]:
    if not isinstance(row.get("instruction"), str):
        raise RowError("field 'instruction' must be text", "missing_field" if "instruction" not in row else "wrong_type")
    out = _system(row)
    for i, pair in enumerate(row.get("history") or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RowError(f"history[{i}] must be a [question, answer] pair", "wrong_type")
        out += [Message("user", pair[0]), Message("assistant", pair[1])]
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise RowError("field 'input' must be text", "wrong_type")
    return out + [Message("user", row["instruction"] + ("\n\n" + extra if extra.strip() else ""))]


def _alpaca(row: dict) -> Parsed:
    if not isinstance(row.get("output"), str):
        raise RowError("field 'output' must be text", "wrong_type")
    return Parsed(_alpaca_prompt(row) + [Message("assistant", row["output"])])


def _sharegpt(row: dict) -> Parsed:
    return Parsed(_system(row) + _sharegpt_turns(row["conversations"], "conversations"))


def _prompt_completion(row: dict) -> Parsed:
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, list) and isinstance(completion, list):
        return Parsed(_message_list(prompt + completion, "prompt+completion"))
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise RowError("fields 'prompt' and 'completion' must both be text or both be message lists", "wrong_type")
    return Parsed([Message("user", prompt), Message("assistant", completion)])


def _preference(row: dict) -> Parsed:
    """TRL {prompt, chosen, rejected} (text or messages), also Alpaca-style {instruction, chosen, rejected}."""
    if "instruction" in row:
        prompt = _alpaca_prompt(row)
    elif "prompt" in row:
        prompt = _system(row) + _prompt_of(row["prompt"], "prompt")
    else:  # TRL's implicit prompt: the shared leading turns of chosen and rejected
        chosen, rejected = _turns(row["chosen"], "chosen"), _turns(row["rejected"], "rejected")
        k = 0
        while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
            k += 1
        return Parsed(chosen, rejected[k:])
    return Parsed(prompt + _turns(row["chosen"], "chosen"), _turns(row["rejected"], "rejected"))


def _sharegpt_preference(row: dict) -> Parsed:
    prompt = _system(row) + _sharegpt_turns(row["conversations"], "conversations")
    return Parsed(prompt + _sharegpt_turns(row["chosen"], "chosen"), _sharegpt_turns(row["rejected"], "rejected"))


def _openai_dpo(row: dict) -> Parsed:
    """OpenAI fine-tuning DPO: {input: {messages}, preferred_output: [...], non_preferred_output: [...]}."""
    inp = row["input"]
    if not isinstance(inp, dict) or "messages" not in inp:
        raise RowError("field 'input' must be an object with 'messages'", "wrong_type")
    prompt = _message_list(inp["messages"], "input.messages")
    return Parsed(prompt + _message_list(row["preferred_output"], "preferred_output"),
                  _message_list(row["non_preferred_output"], "non_preferred_output"))


def _unpaired(row: dict) -> Parsed:
    label = row["label"]
    if not isinstance(label, bool):
        raise RowError(f"field 'label' must be true or false, got {label!r}", "wrong_type")
    if "messages" in row:
        inner = _messages(row)
    elif "conversations" in row:
        inner = _sharegpt(row)
    else:
        inner = Parsed(_prompt_of(row["prompt"], "prompt") + _turns(row["completion"], "completion"))
    return Parsed(inner.messages, label=label)


def _text(row: dict) -> Parsed:
    if not isinstance(row["text"], str):
        raise RowError("field 'text' must be text", "wrong_type")
    return Parsed([Message("assistant", row["text"])])


def _has(*keys: str) -> Callable[[dict], bool]:
    return lambda r: all(k in r for k in keys)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("openai_dpo", _has("input", "preferred_output", "non_preferred_output"), _openai_dpo,
           "OpenAI DPO: {input: {messages}, preferred_output, non_preferred_output}", "preference"),
    Format("sharegpt_preference", _has("conversations", "chosen", "rejected"), _sharegpt_preference,
           "ShareGPT preference: {conversations, chosen: {from, value}, rejected: {from, value}}", "preference"),
    Format("preference", _has("chosen", "rejected"), _preference,
           "preference: {prompt, chosen, rejected}", "preference"),
    Format("unpaired", lambda r: "label" in r and ("messages" in r or "conversations" in r or _has("prompt", "completion")(r)),
           _unpaired, "unpaired preference: {messages | prompt+completion, label: bool}", "unpaired"),
    Format("openai_rft", _ends_with_user, _messages,
           "OpenAI reinforcement: {messages ending with a user turn, other fields for the grader}", "prompt"),
    Format("messages", _has("messages"), _messages, "OpenAI chat: {messages: [{role, content}]}"),
    Format("sharegpt", _has("conversations"), _sharegpt, "ShareGPT: {conversations: [{from, value}]}"),
    Format("alpaca", _has("instruction", "output"), _alpaca, "Alpaca: {instruction, input, output}"),
    Format("prompt_completion", _has("prompt", "completion"), _prompt_completion, "TRL: {prompt, completion}"),
    Format("text", lambda r: "text" in r and len(r) <= 2, _text, "text: {text}", "text"),
)}


def detect(row: object, prompts: bool = True) -> Format | None:
    """The first format ``row`` matches; ``prompts=False`` leaves out prompt-only rows, so a chat file whose
    first row lacks its answer is reported as that broken row, not as reinforcement data."""
    if not isinstance(row, dict):
        return None
    for fmt in FORMATS.values():
        if (prompts or fmt.kind != "prompt") and fmt.detect(row):
            return fmt
    return None
