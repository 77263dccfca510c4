"""OpenAI-compatible HTTP server over one `Engine`: `strop serve MODEL`.

Routes: ``GET /health`` (never needs a key), ``GET /v1/models``,
``GET /v1/models/{id}`` and ``POST /v1/chat/completions`` (plain or SSE).

Where we differ from OpenAI, on purpose:
  * ``temperature`` defaults to 0 (greedy), not 1: a local model under test
    should give the same answer to the same request unless asked otherwise.
  * ``n`` must be 1; ``max_tokens`` is clamped to ``max_tokens_cap`` and to
    what is left of the context; fields we do not use (tools, logprobs...)
    are ignored, because clients send many of them by default.
  * ``usage.completion_tokens`` counts every generated token, including any
    cut off by a ``stop`` string, since they were computed.

Generation is blocking PyTorch work, so it runs in worker threads; the
engine's own lock serialises requests on the one model.
"""
from __future__ import annotations

import hmac
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import StropError
from .engine import Engine


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


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, description="0 or omitted: greedy decoding")
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
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


# -- errors in the OpenAI shape ---------------------------------------------
class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.body = status, {"message": message, "type": type, "param": param, "code": code}


def _is_union_tag(part: object) -> bool:
    """pydantic puts the tried union member ("str", "list[TextPart]") in the error location."""
    return isinstance(part, str) and (part in {"str", "int", "float", "bool", "none"} or "[" in part)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    err = exc.errors()[0]
    loc = [p for p in err.get("loc", ()) if p != "body" and not _is_union_tag(p)]
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or None
    return (f"{param}: {err['msg']}" if param else err["msg"]), param


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse({"error": exc.body}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse({"error": APIError(400, message, param=param).body}, status_code=400)

    @app.exception_handler(StropError)
    async def strop_error(_: Request, exc: StropError) -> JSONResponse:
        return JSONResponse({"error": APIError(400, str(exc)).body}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": APIError(exc.status_code, str(exc.detail)).body}, status_code=exc.status_code)


# -- the app ----------------------------------------------------------------
def model_id_for(name: str) -> str:
    """A short id for the served model: the alias, hub id, or the file/directory name."""
    path = Path(name).expanduser()
    if not path.exists():
        return name
    path = path.resolve()
    if path.name == "final":  # runs/NAME/final: the run's name says more
        path = path.parent
    return path.stem if path.suffix == ".gguf" else path.name


def _auth(api_key: str | None):
    async def check(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "Incorrect or missing API key; send 'Authorization: Bearer KEY'",
                           code="invalid_api_key")
    return check


def create_app(engine: Engine, *, model_id: str | None = None, api_key: str | None = None,
               max_tokens_cap: int = 2048) -> FastAPI:
    """The FastAPI app serving ``engine``; ``api_key`` (if set) guards every /v1 route."""
    model_id = model_id or model_id_for(engine.name)
    created = int(time.time())
    card = {"id": model_id, "object": "model", "created": created, "owned_by": "strop"}
    app = FastAPI(title="strop", docs_url=None, redoc_url=None)
    app.state.model_id = model_id
    _install_error_handlers(app)
    guarded = [Depends(_auth(api_key))]

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=guarded)
    async def list_models() -> dict:
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{name:path}", dependencies=guarded)
    async def get_model(name: str) -> dict:
        _check_model(name, model_id)
        return card

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat_completions(req: ChatRequest):
        _check_model(req.model, model_id)
        if req.n not in (None, 1):
            raise APIError(400, f"n={req.n} is not supported; this server returns one choice (n=1)", param="n")
        messages = [m.as_dict() for m in req.messages]
        n_prompt = len(await run_in_threadpool(engine.encode, messages))
        if n_prompt >= engine.context_length:
            raise APIError(400, f"the prompt has {n_prompt} tokens but the model's context length is "
                                f"{engine.context_length} tokens", param="messages", code="context_length_exceeded")
        gen = _gen_args(req, max_tokens_cap)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_sse(engine, messages, gen, req.stops(), include_usage, meta),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        done = await run_in_threadpool(lambda: engine.chat(messages, stop=req.stops(), **gen))
        return {**meta, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                             "logprobs": None, "finish_reason": done.finish_reason}],
                "usage": _usage(done.prompt_tokens, done.completion_tokens)}

    return app


def _check_model(name: str | None, model_id: str) -> None:
    if name and name != model_id:
        raise APIError(404, f"The model '{name}' does not exist; this server serves '{model_id}'",
                       param="model", code="model_not_found")


def _gen_args(req: ChatRequest, cap: int) -> dict:
    wanted = req.max_completion_tokens or req.max_tokens or cap
    return {"max_new_tokens": min(wanted, cap), "temperature": req.temperature or 0.0,
            "top_p": req.top_p or 1.0, "seed": req.seed}


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# -- streaming ----------------------------------------------------------------
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


def _event(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def _chunk(meta: dict, delta: dict, finish: str | None = None) -> str:
    return _event({**meta, "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})


_END = object()


def _drain(pieces: Iterator[str]) -> None:
    for _ in pieces:
        pass


async def _sse(engine: Engine, messages: list[dict], gen: dict, stops: list[str], include_usage: bool, meta: dict):
    stats: dict = {}
    pieces = engine.stream(messages, stats=stats, **gen)
    cut, hit = StopFilter(stops), False
    yield _chunk(meta, {"role": "assistant", "content": ""})
    try:
        while not hit:
            piece = await run_in_threadpool(next, pieces, _END)
            if piece is _END:
                break
            text, hit = cut.feed(piece)
            if text:
                yield _chunk(meta, {"content": text})
        if not hit and (rest := cut.flush()):
            yield _chunk(meta, {"content": rest})
        yield _chunk(meta, {}, "stop" if hit else stats.get("finish_reason", "length"))
        if include_usage:
            if hit:  # generation runs on to its end regardless; the token counts come when it does
                await run_in_threadpool(_drain, pieces)
            usage = _usage(stats.get("prompt_tokens", 0), stats.get("completion_tokens", 0))
            yield _event({**meta, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    except Exception as exc:  # headers are already sent: report in-band, as OpenAI does
        yield _event({"error": APIError(500, f"generation failed: {exc}", type="server_error").body})
        return
    yield _event("[DONE]")


# -- entry point --------------------------------------------------------------
def run(model: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None) -> None:
    """Load ``model`` and serve it until interrupted (``strop serve``)."""
    import uvicorn

    engine = Engine(model)
    app = create_app(engine, api_key=api_key)
    shown = f"[{host}]" if ":" in host else host
    print(f"strop: serving {app.state.model_id} on http://{shown}:{port}/v1", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
