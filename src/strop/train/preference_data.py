"""Turn loaded preference / unpaired / prompt data into the text rows TRL's trainers take.

strop renders with the model's chat template itself (the same way SFT does,
data/render.py) and hands TRL plain-text ``prompt`` / ``chosen`` /
``rejected`` (or ``completion`` + ``label``). Each completion ends at the
end-of-turn token, so TRL's "add EOS if missing" leaves it alone.
"""
from __future__ import annotations

from ..core.config import TrainConfig
from ..core.errors import StropError
from ..data import Conversation, load, split
from ..data.load import ANY_KIND
from ..data.records import KINDS, Message
from ..methods.objectives import get
from ..models.templates import prompt_text, render_chat, with_system

# Row fields that are part of a data format, not extra columns for reward functions.
FORMAT_FIELDS = {"messages", "conversations", "prompt", "completion", "chosen", "rejected", "system", "instruction",
                 "input", "output", "history", "preferred_output", "non_preferred_output", "label", "tools", "text"}


def split_texts(tok, prompt: list[Message], answer: list[Message], system_prompt: str, where: str) -> tuple[str, str]:
    """(prompt text with generation prompt, completion text up to and including the end-of-turn token)."""
    head = prompt_text(tok, prompt, system_prompt)
    full = render_chat(tok, with_system(prompt + answer, system_prompt), add_generation_prompt=False)
    if not full.startswith(head):
        raise StropError(f"{where}: the chat template does not render the prompt as a prefix of prompt + answer")
    completion = full[len(head):]
    eos = tok.eos_token
    if eos and eos in completion:
        completion = completion[: completion.rindex(eos) + len(eos)]  # drop the template's trailing newline
    return head, completion


def _pair_row(tok, conv: Conversation, cfg: TrainConfig) -> dict:
    pair = conv.pair()
    prompt, chosen = split_texts(tok, pair.prompt, pair.chosen, cfg.system_prompt, pair.where)
    _, rejected = split_texts(tok, pair.prompt, pair.rejected, cfg.system_prompt, pair.where)
    if chosen == rejected:
        raise StropError(f"{pair.where}: chosen and rejected answers are identical")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _unpaired_row(tok, conv: Conversation, cfg: TrainConfig) -> dict:
    prompt, completion = split_texts(tok, conv.prompt_messages, conv.messages[len(conv.prompt_messages):],
                                     cfg.system_prompt, conv.where)
    return {"prompt": prompt, "completion": completion, "label": bool(conv.label)}


def prompt_row(tok, conv: Conversation, cfg: TrainConfig) -> dict:
    """A GRPO prompt; the row's own answer (chosen, for pairs) becomes ``reference`` for reward functions."""
    row = {"prompt": prompt_text(tok, conv.prompt_messages, cfg.system_prompt), "reference": conv.reference}
    for key, value in (conv.row or {}).items():
        if key not in FORMAT_FIELDS and isinstance(value, (str, int, float, bool, list)):
            row[key] = value
    return row


ROW_BUILDERS = {"preference": _pair_row, "unpaired": _unpaired_row}


def _load_checked(path: str, objective: str):
    obj = get(objective)
    ds = load(path, kinds=ANY_KIND)
    if ds.kind not in obj.data_kinds:
        wants = " or ".join(KINDS[k] for k in obj.data_kinds)
        hint = {"kto": "; KTO needs rows with a true/false label (use --objective dpo for pairs)",
                "dpo": "; paired objectives need chosen and rejected answers (use --objective kto for labels)"}
        raise StropError(f"{path}: holds {KINDS[ds.kind]} (format {ds.format}); --objective {objective} needs "
                         f"{wants}{hint.get(objective, '')}")
    return ds


def build_rows(cfg: TrainConfig, tok) -> tuple[list[dict], list[dict], dict]:
    """(train rows, eval rows, data report) for ``cfg.objective``."""
    if not cfg.data:
        raise StropError("option data: no training file given (use --data FILE)")
    ds = _load_checked(cfg.data, cfg.objective)
    report = {"data": cfg.data, "format": ds.format, "kind": ds.kind, "rows_read": len(ds)}
    if cfg.eval_data:
        train_convs, eval_convs = ds.conversations, _load_checked(cfg.eval_data, cfg.objective).conversations
    else:
        train_convs, eval_convs = split(ds.conversations, cfg.val_size, cfg.seed)
    builder = prompt_row if cfg.objective == "grpo" else ROW_BUILDERS[ds.kind]
    train = [builder(tok, c, cfg) for c in train_convs]
    if cfg.objective != "grpo":  # GRPO hands extra columns to reward functions; ids stay out of their way
        for row, conv in zip(train, train_convs):
            row["sample_id"] = conv.where  # for samples.jsonl (train/samples.py)
    evalr = [builder(tok, c, cfg) for c in eval_convs]
    if cfg.objective == "kto":
        _check_both_labels(train, cfg.data)
    report.update(train_rows=len(train), eval_rows=len(evalr))
    return train, evalr, report


def _check_both_labels(rows: list[dict], path: str) -> None:
    labels = {r["label"] for r in rows}
    if len(labels) < 2:
        only = "desirable (true)" if True in labels else "undesirable (false)"
        raise StropError(f"{path}: every KTO training row is labelled {only}; KTO needs both kinds")
