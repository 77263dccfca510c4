"""`strop data preview`: show examples exactly as the model sees them, trained tokens highlighted."""
from __future__ import annotations

import html

from .records import Conversation
from .render import IGNORE, render

GREEN, DIM, RESET = "\033[1;32m", "\033[2m", "\033[0m"


def spans(tok, conv: Conversation, max_length: int, system_prompt: str = "") -> tuple[list[tuple[str, bool]], int, bool]:
    """The rendered text cut into (piece, trained) runs, the trained-token count and truncation."""
    r = render(tok, conv, max_length, system_prompt=system_prompt)
    runs: list[tuple[str, bool]] = []
    for tid, label in zip(r.input_ids, r.labels):
        piece, trained = tok.decode([tid]), label != IGNORE
        if runs and runs[-1][1] == trained:
            runs[-1] = (runs[-1][0] + piece, trained)
        else:
            runs.append((piece, trained))
    return runs, r.n_trainable, r.truncated


def terminal(tok, convs: list[Conversation], max_length: int, colour: bool = True, system_prompt: str = "") -> str:
    out = []
    for c in convs:
        runs, n, cut = spans(tok, c, max_length, system_prompt)
        head = f"--- {c.where}: {n} trained tokens{' (truncated)' if cut else ''} ---"
        if colour:
            body = "".join(f"{GREEN}{p}{RESET}" if t else f"{DIM}{p}{RESET}" for p, t in runs)
        else:  # no colour: mark trained text with [[ ]]
            body = "".join(f"[[{p}]]" if t else p for p, t in runs)
        out += [head, body]
    return "\n".join(out)


def page(tok, convs: list[Conversation], max_length: int, system_prompt: str = "") -> str:
    blocks = []
    for c in convs:
        runs, n, cut = spans(tok, c, max_length, system_prompt)
        body = "".join(f'<mark>{html.escape(p)}</mark>' if t else f"<span>{html.escape(p)}</span>" for p, t in runs)
        blocks.append(f"<h2>{html.escape(c.where)}: {n} trained tokens{' (truncated)' if cut else ''}</h2><pre>{body}</pre>")
    return ("<!doctype html><html><head><meta charset=utf-8><title>strop data preview</title><style>"
            "body{font-family:system-ui;margin:2rem}pre{white-space:pre-wrap;background:#f7f7f7;padding:.8rem}"
            "span{color:#888}mark{background:#c8f7c5;color:#000}</style></head><body><h1>What the model is trained on</h1>"
            "<p>Highlighted text carries loss; grey text is context only.</p>" + "".join(blocks) + "</body></html>")
