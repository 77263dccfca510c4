"""Between the HTTP routes and the batcher: submit, then turn token ids into text pieces."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from .batching import DONE, Request
from .textstream import Detokenizer


class StopFilter:
    """Cuts streamed text at the first stop string, holding back any tail that
    could be the start of one, so no part of a stop string is ever sent."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """Text safe to send now, and whether a stop string was reached."""
        text = self.held + piece
        cut = min((text.find(s) for s in self.stops if s in text), default=-1)
        if cut >= 0:
            self.held = ""
            return text[:cut], True
        keep = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.held = text[len(text) - keep:]
        return text[:len(text) - keep], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


@dataclass
class Outcome:
    """What one choice produced; ``tokens`` counts tokens up to and including the one
    that completed a stop string (generation stops there, so later ones never exist)."""
    tokens: int = 0
    finish_reason: str = "length"
    first_token_s: float | None = None
    stop_string: bool = False  # a stop string ended it (not the model, nor the length)
    pieces: list[str] = field(default_factory=list)


def submit_all(batcher, ids: list[int], gen: dict, adapter: str | None, n: int, **fields) -> list[Request]:
    """``n`` requests for one prompt (seeds seed, seed + 1, ...); ``fields``: more Request fields."""
    reqs: list[Request] = []
    try:
        for i in range(n):
            seed = None if gen["seed"] is None else gen["seed"] + i
            reqs.append(batcher.submit(Request(ids, gen["max_new_tokens"], gen["temperature"], gen["top_p"],
                                               seed, adapter, **fields)))
    except BaseException:  # a full queue, or anything else: none of the siblings decodes for nobody
        for r in reqs:
            r.cancel()
        raise
    return reqs


async def pieces(req: Request, tok, stops: list[str], out: Outcome):
    """Yield text pieces of ``req`` as its tokens arrive; cancels it on a stop string."""
    detok, cut = Detokenizer(tok), StopFilter(stops)
    try:
        while (token := await run_in_threadpool(req.tokens.get)) is not DONE:
            if out.first_token_s is None:
                out.first_token_s = time.monotonic() - req.submitted
            out.tokens += 1
            text, hit = cut.feed(detok.add(token))
            if text:
                yield text
            if hit:
                out.finish_reason, out.stop_string = "stop", True
                return
        if req.error is not None:
            raise req.error
        if rest := cut.flush():
            yield rest
        out.finish_reason = req.finish_reason
    finally:
        req.cancel()  # a no-op when done; frees the slot when the client left or a stop string hit


async def collect(req: Request, tok, stops: list[str]) -> tuple[str, Outcome]:
    out = Outcome()
    text = "".join([p async for p in pieces(req, tok, stops, out)])
    return text, out
