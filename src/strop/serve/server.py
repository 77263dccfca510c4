"""OpenAI-compatible HTTP server over one `Engine`: `strop serve MODEL`.

Routes: ``GET /health`` (never needs a key), ``GET /metrics`` (Prometheus
text), ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``
and ``POST /v1/completions`` (plain or SSE).

Where we differ from OpenAI, on purpose:
  * ``temperature`` defaults to 0 (greedy), not 1: a local model under test
    should give the same answer to the same request unless asked otherwise.
  * ``n`` > 1 works without streaming only; ``max_tokens`` is clamped to
    ``max_tokens_cap`` and to what is left of the context; fields we do not
    use (tools, logprobs...) are ignored, because clients send many of them.
  * generation stops at a ``stop`` string, and ``usage.completion_tokens``
    counts the tokens up to the one that completed it.
  * ``/v1/completions`` takes one prompt per request.

All generation goes through one `Batcher` (continuous batching, batching.py);
routes only submit requests and turn the token ids they get back into text.
"""
from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Literal

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from ..core.errors import StropError
from ..http.errors import APIError, install_error_handlers
from ..http.guard import API_CSP, Guard, allowed_hosts
from ..http.server import drained, serve_until_stopped
from ..models.engine import Engine
from ..models.templates import prompt_text
from . import adapters as adapter_table
from .batching import Batcher, Closed, QueueFull
from .generation import Outcome, StopFilter, collect, pieces, submit_all  # noqa: F401 (StopFilter re-exported)
from .metrics import Metrics


# -- request schema -------------------------------------------------------
class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def as_dict(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        # "developer" is OpenAI's newer name for the system role; chat templates know only "system".
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, description="0 or omitted: greedy decoding")
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-2**63, le=2**63 - 1, description="OpenAI's range: a signed 64-bit integer")
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=8)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError(f"at most 4 stop sequences, got {len(stop)}")
        return stop

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(Sampling):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError(f"exactly one prompt per request, got {len(prompt)}")
        return prompt

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


def model_id_for(name: str) -> str:
    """A short id for the served model: the alias, hub id, or the file/directory name."""
    path = Path(name).expanduser()
    if not path.exists():
        return name
    path = path.resolve()
    if path.name == "final":  # runs/NAME/final: the run's name says more
        path = path.parent
    return path.stem if path.suffix == ".gguf" else path.name


def create_app(engine: Engine, *, model_id: str | None = None, api_key: str | None = None,
               max_tokens_cap: int = 2048, adapters: dict[str, Path] | None = None, max_batch: int = 8,
               max_waiting: int = 64, max_body_bytes: int = 1 << 20, bind_host: str | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` (plus any named ``adapters`` over the same base);
    ``api_key`` (if set) guards every route but /health. ``bind_host``: the address the server
    listens on, whose names alone it answers to (guard.py); None (embedded use) checks no Host."""
    model_id = model_id or model_id_for(engine.name)
    served = _served(engine, model_id, adapters or {})
    batcher = Batcher(engine.model, engine.tok.eos_token_id, max_batch=max_batch, max_waiting=max_waiting,
                      lock=engine.lock)
    created = int(time.time())
    cards = [{"id": m, "object": "model", "created": created, "owned_by": "strop"} for m in served]
    app = FastAPI(title="strop", docs_url=None, redoc_url=None)
    app.state.model_id, app.state.batcher, app.state.metrics = model_id, batcher, Metrics()
    install_error_handlers(app)
    app.add_middleware(Guard, api_key=api_key, hosts=allowed_hosts(bind_host) if bind_host else None,
                       public=lambda method, path: path == "/health", body_limit=lambda path: max_body_bytes,
                       csp=lambda path: API_CSP, on_status=app.state.metrics.request)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(app.state.metrics.render(batcher), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict:
        _lookup(name, served)
        return next(c for c in cards if c["id"] == name)

    async def run(req: Sampling, ids: list[int], meta: dict, kind: str):
        adapter = _lookup(req.model or model_id, served)[0]
        _check_length(len(ids), engine.context_length)
        n = 1 if req.n is None else req.n
        if req.stream and n != 1:
            raise APIError(400, f"n={n}: use 1 when streaming", param="n")
        gen = _gen_args(req, max_tokens_cap, engine.context_length - len(ids))
        try:
            reqs = submit_all(batcher, ids, gen, adapter, n)
        except Closed:
            raise APIError(503, "this model is being unloaded; retry shortly", type="server_error",
                           code="model_unloading", headers={"Retry-After": "1"}) from None
        except QueueFull:
            raise APIError(429, "the server is busy: too many requests waiting; retry shortly", type="server_busy",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return Stream(_sse(reqs[0], engine.tok, req.stops(), include_usage, meta, len(ids), kind,
                               app.state.metrics), reqs)
        try:
            done = [await collect(r, engine.tok, req.stops()) for r in reqs]
        except Exception as exc:  # one row failed in the batcher: this request alone, in OpenAI's shape
            raise APIError(500, f"generation failed: {exc}", type="server_error", code="generation_failed") from None
        finally:  # one choice failing, or the client leaving, ends its siblings too
            for r in reqs:
                r.cancel()
        choices = [_choice(kind, i, text, out.finish_reason) for i, (text, out) in enumerate(done)]
        app.state.metrics.add("completion_tokens_total", sum(out.tokens for _, out in done))
        return {**meta, "object": OBJECT[kind], "choices": choices,
                "usage": _usage(len(ids), sum(out.tokens for _, out in done))}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        system = _lookup(req.model or model_id, served)[1]  # each adapter keeps its run's system prompt
        text = prompt_text(engine.tok, [m.as_dict() for m in req.messages], system)
        ids = await run_in_threadpool(lambda: engine.tok(text, add_special_tokens=False)["input_ids"])
        return await run(req, ids, _meta("chatcmpl", req.model or model_id), "chat")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        ids = engine.tok(req.text(), add_special_tokens=False)["input_ids"]
        return await run(req, ids, _meta("cmpl", req.model or model_id), "text")

    return app


OBJECT = {"chat": "chat.completion", "text": "text_completion"}


def _served(engine: Engine, model_id: str, adapters: dict[str, Path]) -> dict[str, tuple[str | None, str]]:
    """model id -> (peft adapter name for the batcher, or None when no adapters are loaded; system prompt)."""
    if not adapters:
        return {model_id: (None, engine.system_prompt)}
    from peft import PeftModel

    own = "default" if isinstance(engine.model, PeftModel) else adapter_table.BASE
    if model_id in adapters:
        raise StropError(f"option --adapter: {model_id!r} is already the served model's name")
    engine.model = adapter_table.attach(engine.model, adapters)
    return {model_id: (own, engine.system_prompt),
            **{name: (name, adapter_table.system_prompt(path)) for name, path in adapters.items()}}


def _lookup(name: str, served: dict) -> tuple[str | None, str]:
    if name not in served:  # looked up, never opened: a name is not a path
        raise APIError(404, f"The model '{name}' does not exist; this server serves {', '.join(map(repr, served))}",
                       param="model", code="model_not_found")
    return served[name]


def _check_length(n_prompt: int, context: int) -> None:
    if n_prompt >= context:
        raise APIError(400, f"the prompt has {n_prompt} tokens but the model's context length is {context} tokens",
                       param="messages", code="context_length_exceeded")


def _meta(prefix: str, model: str) -> dict:
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}


def _choice(kind: str, index: int, text: str, finish: str) -> dict:
    if kind == "chat":
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish}
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def _gen_args(req: Sampling, cap: int, room: int) -> dict:
    wanted = req.max_completion_tokens or req.max_tokens or cap
    return {"max_new_tokens": max(1, min(wanted, cap, room)), "temperature": req.temperature or 0.0,
            "top_p": req.top_p or 1.0, "seed": req.seed}


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# -- streaming ----------------------------------------------------------------
class Stream(StreamingResponse):
    """An SSE response that cancels its requests the moment it ends, however it ends.

    Starlette stops a stream on a client disconnect by cancelling it, often while
    the generator waits at a ``yield``; the generator's own ``finally`` then runs
    only when it is garbage-collected, and the batcher would decode for nobody.
    """

    def __init__(self, content, reqs) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.reqs = reqs

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for r in self.reqs:
                r.cancel()
            await self.body_iterator.aclose()


def _event(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def _chunk(kind: str, meta: dict, text: str | None, finish: str | None = None, *, first: bool = False) -> str:
    if kind == "text":
        return _event({**meta, "object": "text_completion",
                       "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]})
    delta = {"role": "assistant", "content": ""} if first else ({} if text is None else {"content": text})
    return _event({**meta, "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})


async def _sse(req, tok, stops: list[str], include_usage: bool, meta: dict, n_prompt: int, kind: str, metrics):
    out = Outcome()
    if kind == "chat":
        yield _chunk(kind, meta, None, first=True)
    try:
        async for text in pieces(req, tok, stops, out):
            yield _chunk(kind, meta, text)
        yield _chunk(kind, meta, None, out.finish_reason)
        metrics.add("completion_tokens_total", out.tokens)
        if out.first_token_s is not None:
            metrics.add("time_to_first_token_seconds_total", out.first_token_s)
        if include_usage:
            obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
            yield _event({**meta, "object": obj, "choices": [], "usage": _usage(n_prompt, out.tokens)})
    except Exception as exc:  # headers are already sent: report in-band, as OpenAI does
        yield _event({"error": APIError(500, f"generation failed: {exc}", type="server_error").body})
        return
    yield _event("[DONE]")


# -- entry point --------------------------------------------------------------

def run(model: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, *,
        adapters: list[str] | None = None, max_batch: int = 8, max_waiting: int = 64,
        max_tokens_cap: int = 2048, drain_timeout: float = 30.0, allow_pickle: bool = False) -> int:
    """Load ``model`` and serve it (``strop serve``). SIGTERM/Ctrl-C: stop accepting, let in-flight
    requests finish for up to ``drain_timeout`` seconds; exit 0, or ``http.server.DRAIN_CUT_OFF`` if some did not."""
    table = adapter_table.parse(adapters or [], allow_pickle)  # refuse bad names before the slow model load
    engine = Engine(model, allow_pickle=allow_pickle)
    app = create_app(engine, api_key=api_key, adapters=table, max_batch=max_batch, max_waiting=max_waiting,
                     max_tokens_cap=max_tokens_cap, bind_host=host)
    shown = f"[{host}]" if ":" in host else host
    print(f"strop: serving {app.state.model_id} on http://{shown}:{port}/v1", file=sys.stderr, flush=True)
    try:
        cut = serve_until_stopped(app, host, port, drain_timeout)
    finally:
        app.state.batcher.close()
    return drained(cut, drain_timeout, "server")
