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
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

DONE = None  # sentinel put on a request's queue after its last token


class QueueFull(Exception):
    """Raised by ``submit`` when ``max_waiting`` requests are already waiting."""


@dataclass
class Request:
    ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    adapter: str | None = None  # peft adapter name; None: the model's default
    tokens: queue.Queue = field(default_factory=queue.Queue)  # token ids, then DONE
    new: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    cancelled: bool = False
    error: BaseException | None = None
    submitted: float = field(default_factory=time.monotonic)
    generator: object = None

    def cancel(self) -> None:
        """Stop generating for this request (the client went away)."""
        self.cancelled = True


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
        self.model, self.eos = model, eos_token_id
        self.lock = lock or threading.Lock()  # shared with the Engine, whose own calls use the same model
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.waiting: queue.Queue[Request] = queue.Queue()
        self.rows: list[Request] = []
        self.cache = self.mask = None  # (B, H, T, D) per layer; (B, T)
        self.stats = {"requests": 0, "tokens": 0, "steps": 0, "batched_rows": 0}
        self._wake = threading.Event()
        self._stop = False
        self.thread = threading.Thread(target=self._loop, name="strop-batcher", daemon=True)
        self.thread.start()

    # -- public --------------------------------------------------------------
    def submit(self, req: Request) -> Request:
        if self.waiting.qsize() >= self.max_waiting:
            raise QueueFull(f"{self.waiting.qsize()} requests already waiting")
        if req.seed is not None or req.temperature > 0:
            import torch

            req.generator = torch.Generator().manual_seed(req.seed if req.seed is not None else
                                                          int.from_bytes(__import__("os").urandom(4), "little"))
        self.waiting.put(req)
        self._wake.set()
        return req

    @property
    def busy(self) -> int:
        return len(self.rows) + self.waiting.qsize()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self.thread.join(timeout=5)

    # -- the loop ------------------------------------------------------------
    def _loop(self) -> None:
        import torch

        while not self._stop:
            if not self.rows and self.waiting.empty():
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                with self.lock, torch.inference_mode():
                    self._admit()
                    if self.rows:
                        self._step()
            except Exception as exc:  # fail the rows in flight, keep serving the rest
                for r in self.rows:
                    r.error = exc
                    r.tokens.put(DONE)
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

    def _forward(self, ids, mask, cache, positions, adapters):
        kw = {"adapter_names": adapters} if any(a is not None for a in adapters) else {}
        # logits_to_keep=1: the vocabulary projection only for the last position (prefill would do all)
        out = self.model(input_ids=ids, attention_mask=mask, past_key_values=cache, position_ids=positions,
                         use_cache=True, logits_to_keep=1, **kw)
        return out.logits[:, -1].float(), out.past_key_values  # (B, V)

    def _prefill(self, req: Request) -> None:
        import torch
        from transformers import DynamicCache

        ids = torch.tensor([req.ids])  # (1, T)
        mask = torch.ones_like(ids)
        logits, cache = self._forward(ids, mask, DynamicCache(), torch.arange(ids.shape[1])[None],
                                      [req.adapter] if req.adapter else [None])
        self._merge(req, cache, mask)
        self.stats["requests"] += 1
        self._emit([req], logits)

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
        self.cache = DynamicCache(ddp_cache_data=layers)
        self.mask = torch.cat([_pad_left(self.mask, length, -1), _pad_left(mask, length, -1)])
        self.rows.append(req)

    def _step(self) -> None:
        import torch

        last = torch.tensor([[r.new[-1]] for r in self.rows])  # (B, 1)
        self.mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=self.mask.dtype)], 1)
        positions = self.mask.sum(1, keepdim=True) - 1  # (B, 1): each row's own position
        logits, self.cache = self._forward(last, self.mask, self.cache, positions, [r.adapter for r in self.rows])
        self.stats["steps"] += 1
        self.stats["batched_rows"] += len(self.rows)
        self._emit(self.rows, logits)

    def _emit(self, rows: list[Request], logits) -> None:
        """Pick each row's next token, hand it out, and drop rows that are done."""
        keep = []
        for i, r in enumerate(rows):
            tok = _pick(logits[i], r)
            if r.cancelled:
                r.finish_reason = "cancelled"
            elif tok == self.eos:
                r.finish_reason = "stop"
            else:
                r.new.append(tok)
                r.tokens.put(tok)
                self.stats["tokens"] += 1
                if len(r.new) < r.max_new_tokens:
                    keep.append(i)
                    continue
            r.tokens.put(DONE)
        if rows is self.rows and len(keep) < len(rows):
            self._select(keep)
        elif rows is not self.rows and not keep:  # a fresh row that finished at its first token
            self._select([j for j, r in enumerate(self.rows) if r is not rows[0]])

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


def _pick(logits, r: Request) -> int:
    import torch

    if r.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / r.temperature, -1)
    if r.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > r.top_p  # keep the smallest set reaching top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=r.generator))
