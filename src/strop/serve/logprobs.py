"""Log-probabilities in OpenAI's two response shapes, from the batcher's `Scored` rows.

``/v1/completions`` uses the legacy shape (parallel lists ``tokens``, ``token_logprobs``,
``top_logprobs``, ``text_offset``); with ``echo`` the prompt's tokens come first, the first
of them with no logprob since nothing precedes it. lm-evaluation-harness's
``local-completions`` model reads exactly this (``echo``, ``logprobs: 1``, ``max_tokens: 1``)
to score multiple-choice tasks. ``/v1/chat/completions`` uses the newer shape
(``{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}``).

Every figure is the model's own distribution (a log-softmax of its logits), not the one
temperature and top_p sampled from, so a score does not depend on how it was sampled.
"""
from __future__ import annotations

MAX_LOGPROBS = 20  # alternatives per position; OpenAI allows 5 on completions and 20 on chat


def _texts(tok, ids: list[int]) -> list[str]:
    """Each token's own text (a character split across tokens shows as U+FFFD, as OpenAI does)."""
    return [tok.decode([i]) for i in ids]


def _top(tok, row) -> dict[str, float]:
    """A position's alternatives as {text: logprob}, always holding the token itself (OpenAI's rule:
    up to ``logprobs`` + 1 entries)."""
    out = {tok.decode([i]): lp for i, lp in row.top}
    out.setdefault(tok.decode([row.token]), row.logprob)
    return out


def completion_logprobs(tok, prompt_ids: list[int], prompt_scores: list | None, generated: list,
                        offset: int) -> dict:
    """The legacy ``logprobs`` object. ``prompt_scores`` (with ``echo``) covers ``prompt_ids[1:]``;
    ``generated`` holds the new tokens' rows; ``offset`` is where the first listed token starts in
    the choice's text (0 with echo, else the prompt's length)."""
    tokens, values, tops = [], [], []
    if prompt_scores is not None:
        tokens += _texts(tok, prompt_ids)
        values += [None] + [r.logprob for r in prompt_scores]
        tops += [None] + [_top(tok, r) for r in prompt_scores]
    tokens += _texts(tok, [r.token for r in generated])
    values += [r.logprob for r in generated]
    tops += [_top(tok, r) for r in generated]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def _entry(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tok, generated: list, top: int) -> dict:
    """The chat ``logprobs`` object for the new tokens' rows, ``top`` alternatives each."""
    return {"content": [{**_entry(tok.decode([r.token]), r.logprob),
                         "top_logprobs": [_entry(tok.decode([i]), lp) for i, lp in r.top[:top]]}
                        for r in generated],
            "refusal": None}


def generated_rows(req, outcome) -> list:
    """The rows of the tokens a choice returned: those its text holds (``outcome.tokens``; a stop
    string ends it early), and the end-of-sequence token when the model chose it. The last one
    matters to lm-eval, which reads a prompt's scores as ``token_logprobs[ctxlen:-1]``."""
    ended_by_model = req.finish_reason == "stop" and not outcome.stop_string
    return req.scores[:outcome.tokens + ended_by_model]
