"""Continuous batching over a KV cache, for the server.

One scheduler thread owns the model. Between decode steps it admits waiting
requests: each is prefilled on its own (so its first token is exactly what a
lone ``model.generate`` would give), then its KV cache is left-padded into the
running batch. Every step decodes one token for every live row; finished or
cancelled rows leave the batch at once, which frees their slot for the next
waiting request. Each row samples with its own settings and its own seeded
generator, so one client's request never changes another's output.

We checked transformers' ContinuousBatchingManager first (it runs on CPU in
5.24), but it uses paged attention whose numerics differ from
``model.generate``, so the server's greedy answers would stop matching
``strop.load(...)`` and ``strop generate``; the ordinary dense cache keeps them
identical.

Faults stay with their row. An exception while prefilling one request (an
unknown adapter, a token id outside the vocabulary...) or while picking one
row's next token ends that request alone, with ``Request.error`` set; the
other rows keep decoding and get exactly the tokens they would have got alone.
Only a failure of the batched forward itself, which no row can be blamed
for, fails the rows in flight; the batcher goes on serving later requests.

Prompt and prefix tuning put what they learned in front of the text, and
peft's forward puts it there again at every call, which a step-by-step cache
cannot use. For those models the batcher runs the base model and starts every
request from the soft prompt's own keys and values (computed once), with the
text's positions after it: what peft's forward computes for the whole row.
Sampling is safe for every temperature in [0, 2] and top_p in (0, 1]:
temperatures below ``GREEDY_BELOW`` are greedy, and a row whose scores are not
all finite is picked from its finite (or +inf) scores, or ends with an error.

``close`` stops taking requests, lets those in flight finish for a while,
fails what is left, ends the thread and drops the model, so an app that is
unloaded frees its memory.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

from ..models.cache import cache_kw, returned_cache
from ..models.engine import GREEDY_BELOW
from ..models.steering import Steering, steer

DONE = None  # sentinel put on a request's queue after its last token
SCORE_CHUNK = 512  # prompt tokens per forward when a prompt is scored: bounds the (tokens x vocabulary) logits


@dataclass
class Scored:
    """One token's log-probability under the model (its own distribution, before temperature or
    top_p), and the ``top`` most likely tokens at that position as (id, logprob), best first."""
    token: int
    logprob: float
    top: list[tuple[int, float]]


def scored(logprobs, tokens, n: int) -> list[Scored]:
    """Scored rows for ``tokens`` (T,) under ``logprobs`` (T, V) (log-softmaxed), with top ``n``."""
    import torch

    chosen = logprobs.gather(-1, tokens[:, None])[:, 0].tolist()
    if n:
        values, ids = torch.topk(logprobs, n, dim=-1)
        tops = [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        tops = [[] for _ in chosen]
    return [Scored(t, lp, top) for t, lp, top in zip(tokens.tolist(), chosen, tops)]


class QueueFull(Exception):
    """Raised by ``submit`` when ``max_waiting`` requests are already waiting."""


class Closed(QueueFull):
    """Raised by ``submit`` once the batcher is closing (its model is being unloaded);
    a QueueFull, so callers answer "busy, retry shortly", and the retry finds the model anew."""


@dataclass
class Request:
    ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    adapter: str | None = None  # peft adapter name; None: the model's default
    logprobs: int | None = None  # record each new token's logprob and this many alternatives; None: off
    score_prompt: bool = False  # also score every prompt token (``prompt_scores``); max_new_tokens may then be 0
    # OpenAI's steering, applied to the scores before choosing (greedy too), never to the logprobs reported
    steering: Steering = field(default_factory=Steering)  # logit_bias and the penalties (models/steering.py)
    tokens: queue.Queue = field(default_factory=queue.Queue)  # token ids, then DONE
    new: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    cancelled: bool = False
    error: BaseException | None = None
    submitted: float = field(default_factory=time.monotonic)
    generator: object = None
    # with ``logprobs``: one Scored per new token, written before the token is queued; the last is
    # the end-of-sequence token when the model chose it (it is scored but never queued)
    scores: list = field(default_factory=list)
    prompt_scores: list | None = None  # with ``score_prompt``: one Scored per prompt token after the first

    def cancel(self) -> None:
        """Stop generating for this request (the client went away)."""
        self.cancelled = True


def soft_prompt_cache(model) -> list:
    """Per layer (key, value), shaped (1, heads, N, head dim), of a prompt or prefix tuning model's N virtual
    positions, as the base model's cache holds them: for prefix tuning the learned prefix itself; for prompt
    tuning the base's keys and values of the virtual token embeddings at positions 0..N-1."""
    import torch

    from ..models.cache import returned_cache

    config = model.active_peft_config
    if config.peft_type in ("PREFIX_TUNING", "CARTRIDGE"):
        cache = model.get_prompt(batch_size=1)
    else:
        base = model.get_base_model()
        embeds = model.get_prompt(batch_size=1).to(base.get_input_embeddings().weight.dtype)  # (1, N, hidden)
        cache = returned_cache(base(inputs_embeds=embeds, position_ids=torch.arange(embeds.shape[1])[None],
                                    use_cache=True, logits_to_keep=1))
    return [(k.detach(), v.detach()) for k, v, *_ in cache]


def _pad_left(t, length: int, dim: int = -2):
    import torch.nn.functional as F

    missing = length - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - (dim % t.dim()) - 1) + [missing, 0]
    return F.pad(t, pad)


class Batcher:
    def __init__(self, model, eos_token_id: int, *, max_batch: int = 8, max_waiting: int = 64,
                 lock: threading.Lock | None = None) -> None:
        from ..patches.prompt_cache import virtual_positions

        self.model, self.eos = model, eos_token_id
        self.prompt_learning = virtual_positions(model) is not None
        self._soft = None  # prompt learning: per layer (key, value) of the soft prompt, made at the first prefill
        self.lock = lock or threading.Lock()  # shared with the Engine, whose own calls use the same model
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.waiting: queue.Queue[Request] = queue.Queue()
        self.rows: list[Request] = []
        self.cache = self.mask = None  # (B, H, T, D) per layer; (B, T)
        self.stats = {"requests": 0, "tokens": 0, "steps": 0, "batched_rows": 0}
        self._wake = threading.Event()
        self._gate = threading.Lock()  # submit vs. close: nothing is queued after the loop's last look
        self._closing = False
        self._deadline = float("inf")
        self.thread = threading.Thread(target=self._loop, name="strop-batcher", daemon=True)
        self.thread.start()

    # -- public --------------------------------------------------------------
    def submit(self, req: Request) -> Request:
        if self._closing:
            raise Closed("the model is being unloaded")
        if self.waiting.qsize() >= self.max_waiting:
            raise QueueFull(f"{self.waiting.qsize()} requests already waiting")
        if req.seed is not None or req.temperature > 0:
            import torch

            req.generator = torch.Generator().manual_seed(req.seed if req.seed is not None else
                                                          int.from_bytes(__import__("os").urandom(4), "little"))
        with self._gate:
            if self._closing:
                raise Closed("the model is being unloaded")
            self.waiting.put(req)
        self._wake.set()
        return req

    @property
    def busy(self) -> int:
        return len(self.rows) + self.waiting.qsize()

    @property
    def closed(self) -> bool:
        return self._closing and not self.thread.is_alive()

    def close(self, timeout: float = 5.0, *, wait: bool = True) -> None:
        """Take no more requests; those already submitted keep decoding for up to ``timeout``
        seconds, then any left end with an error. The thread then ends and lets go of the
        model. ``wait``: block until it has."""
        with self._gate:
            if not self._closing:
                self._closing, self._deadline = True, time.monotonic() + timeout
        self._wake.set()
        if wait and threading.current_thread() is not self.thread:
            self.thread.join(timeout + 5)

    # -- the loop ------------------------------------------------------------
    def _loop(self) -> None:
        import torch

        try:
            while True:
                idle = not self.rows and self.waiting.empty()
                if self._closing and (idle or time.monotonic() >= self._deadline):
                    break
                if idle:
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                try:
                    with self.lock, torch.inference_mode():
                        self._admit()
                        if self.rows:
                            self._step()
                except Exception as exc:  # the batched forward failed: fail the rows in flight, serve the rest
                    self._fail_rows(exc)
        finally:
            with self._gate:  # nothing can be queued from here on
                self._closing = True
            gone = Closed("the model was unloaded before this request finished")
            self._fail_rows(gone)
            while True:
                try:
                    self._fail(self.waiting.get_nowait(), gone)
                except queue.Empty:
                    break
            self.model = None  # the thread held the model; let it go with the app

    @staticmethod
    def _fail(req: Request, exc: BaseException) -> None:
        req.error = exc
        req.tokens.put(DONE)

    def _fail_rows(self, exc: BaseException) -> None:
        for r in self.rows:
            self._fail(r, exc)
        self.rows, self.cache, self.mask = [], None, None

    def _admit(self) -> None:
        while len(self.rows) < self.max_batch:
            try:
                req = self.waiting.get_nowait()
            except queue.Empty:
                return
            if req.cancelled:
                req.tokens.put(DONE)
                continue
            self._prefill(req)

    def _forward(self, ids, mask, cache, positions, adapters, keep: int = 1):
        """(logits of the last ``keep`` positions, or of all with 0; float32), and the cache."""
        kw = {"adapter_names": adapters} if any(a is not None for a in adapters) else {}
        model = self.model.get_base_model() if self.prompt_learning else self.model  # the soft prompt is in the cache
        # logits_to_keep=1: the vocabulary projection only for the last position (prefill would do all)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=keep, **cache_kw(self.model, cache), **kw)
        return out.logits.float(), returned_cache(out)  # (B, keep or T, V)

    def _start(self):
        """A request's cache before its prompt, and how many positions it holds: empty, or for prompt and
        prefix tuning a copy of the soft prompt's keys and values."""
        from transformers import DynamicCache

        if not self.prompt_learning:
            return DynamicCache(), 0
        if self._soft is None:
            self._soft = soft_prompt_cache(self.model)
        return DynamicCache(ddp_cache_data=[(k.clone(), v.clone()) for k, v in self._soft]), self._soft[0][0].shape[-2]

    def _prefill(self, req: Request) -> None:
        """Prefill ``req`` alone and give its first token; anything raised here ends ``req`` only
        (the running batch is not touched until the merge, which builds the new batch before keeping it)."""
        import torch

        try:
            self._check_adapter(req.adapter)
            ids = torch.tensor([req.ids])  # (1, T)
            cache, before = self._start()
            mask = torch.ones(1, before + ids.shape[1], dtype=torch.long)
            if req.score_prompt:
                logits, cache = self._score_prompt(req, cache, before)
            else:
                logits, cache = self._forward(ids, mask, cache, torch.arange(before, before + ids.shape[1])[None],
                                              [req.adapter])
                logits = logits[:, -1]
        except Exception as exc:
            self._fail(req, exc)
            return
        self.stats["requests"] += 1
        if req.max_new_tokens <= 0:  # the prompt's scores were all that was asked for
            req.tokens.put(DONE)
            return
        if self._next(req, logits[0]):
            try:
                self._merge(req, cache, mask)
            except Exception as exc:
                self._fail(req, exc)

    def _score_prompt(self, req: Request, cache, before: int):
        """Prefill ``req`` in chunks of SCORE_CHUNK tokens after the ``before`` positions ``cache`` holds, keeping
        every position's logits to score the prompt's own tokens; returns the last position's logits (1, V)
        and the cache."""
        import torch

        ids, found, last = torch.tensor(req.ids), [], None
        for start in range(0, len(ids), SCORE_CHUNK):
            chunk = ids[start:start + SCORE_CHUNK]
            end = start + len(chunk)
            logits, cache = self._forward(chunk[None], torch.ones(1, before + end, dtype=torch.long), cache,
                                          torch.arange(before + start, before + end)[None], [req.adapter], keep=0)
            logprobs = torch.log_softmax(logits[0], -1)  # position t predicts token t + 1
            if last is not None:  # the previous chunk's last position predicts this chunk's first token
                found += scored(last[None], chunk[:1], req.logprobs or 0)
            if len(chunk) > 1:
                found += scored(logprobs[:-1], chunk[1:], req.logprobs or 0)
            last = logprobs[-1]
        req.prompt_scores = found
        return logits[:, -1], cache

    def _check_adapter(self, name: str | None) -> None:
        """A model without that adapter would ignore the name and answer with the wrong weights."""
        if name is None:
            return
        from .adapters import BASE

        if name != BASE and name not in (getattr(self.model, "peft_config", None) or {}):
            raise ValueError(f"unknown adapter {name!r}")
        if self.prompt_learning:
            raise ValueError(f"adapter {name!r}: a prompt or prefix tuning model is served on its own, with no "
                             "other adapters")

    def _merge(self, req: Request, cache, mask) -> None:
        import torch
        from transformers import DynamicCache

        if self.cache is None:
            self.rows, self.cache, self.mask = [req], cache, mask
            return
        length = max(self.mask.shape[1], mask.shape[1])
        layers = [(torch.cat([_pad_left(k0, length), _pad_left(k1, length)]),
                   torch.cat([_pad_left(v0, length), _pad_left(v1, length)]))
                  for (k0, v0, *_), (k1, v1, *_) in zip(self.cache, cache)]
        merged = torch.cat([_pad_left(self.mask, length, -1), _pad_left(mask, length, -1)])
        self.cache, self.mask = DynamicCache(ddp_cache_data=layers), merged
        self.rows.append(req)

    def _step(self) -> None:
        import torch

        last = torch.tensor([[r.new[-1]] for r in self.rows])  # (B, 1)
        self.mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=self.mask.dtype)], 1)
        positions = self.mask.sum(1, keepdim=True) - 1  # (B, 1): each row's own position
        logits, self.cache = self._forward(last, self.mask, self.cache, positions, [r.adapter for r in self.rows])
        logits = logits[:, -1]
        self.stats["steps"] += 1
        self.stats["batched_rows"] += len(self.rows)
        keep = [i for i, r in enumerate(self.rows) if self._next(r, logits[i])]
        if len(keep) < len(self.rows):
            self._select(keep)

    def _next(self, r: Request, logits) -> bool:
        """Pick ``r``'s next token from its (V,) scores and hand it out; False once ``r`` is done
        (finished, cancelled, or failed: an error here ends this row alone)."""
        try:
            tok = _pick(logits, r)
            if r.logprobs is not None and not r.cancelled:
                import torch

                r.scores += scored(torch.log_softmax(logits, -1)[None], torch.tensor([tok]), r.logprobs)
        except Exception as exc:
            self._fail(r, exc)
            return False
        if r.cancelled:
            r.finish_reason = "cancelled"
        elif tok == self.eos:
            r.finish_reason = "stop"
        else:
            r.new.append(tok)
            r.tokens.put(tok)
            self.stats["tokens"] += 1
            if len(r.new) < r.max_new_tokens:
                return True
        r.tokens.put(DONE)
        return False

    def _select(self, keep: list[int]) -> None:
        import torch

        if not keep:
            self.rows, self.cache, self.mask = [], None, None
            return
        idx = torch.tensor(keep)
        self.rows = [self.rows[i] for i in keep]
        self.cache.batch_select_indices(idx)
        self.mask = self.mask[idx]
        # trim columns that are padding for every remaining row
        first = int((self.mask.cumsum(1) == 0).sum(1).min())
        if first:
            self.mask = self.mask[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]


def _finite(logits):
    """Scores safe to sample from: NaN counts as -inf; if any score is +inf, only those can be picked."""
    import torch

    logits = torch.nan_to_num(logits, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    top = torch.isposinf(logits)
    if bool(top.any()):
        return torch.where(top, 0.0, float("-inf"))
    if not bool(torch.isfinite(logits).any()):
        raise ValueError("the model gave no finite score for any token")
    return logits


def _pick(logits, r: Request) -> int:
    import torch

    temperature, top_p = float(r.temperature), float(r.top_p)
    if temperature != temperature or not 0 < top_p <= 1:  # NaN fails both
        raise ValueError(f"temperature {r.temperature!r}, top_p {r.top_p!r}: use a number for temperature "
                         "and 0 < top_p <= 1")
    if not bool(torch.isfinite(logits).all()):
        logits = _finite(logits)
    logits = steer(logits, r.new, r.steering)  # the same tensor when the request asks for no steering
    if temperature < GREEDY_BELOW:  # 0, negative or tiny: greedy
        return int(logits.argmax())
    scaled = logits / temperature
    if not bool(torch.isfinite(scaled).all()):  # overflowed (or -inf scores): shift the best score to 0 first,
        scaled = (logits - logits.max()) / temperature  # so the softmax never meets inf - inf
    probs = torch.softmax(scaled, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set reaching top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=r.generator))
