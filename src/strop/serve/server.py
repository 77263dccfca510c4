"""OpenAI-compatible HTTP server over one `Engine`: `strop serve MODEL`.

Routes: ``GET /health`` (never needs a key), ``GET /metrics`` (Prometheus
text), ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``
and ``POST /v1/completions`` (plain or SSE), ``POST /v1/responses`` (OpenAI's Responses
API for text, plain or streamed, without stored state), and vLLM's tokenizer routes
``POST /tokenize``, ``POST /detokenize``, ``GET /tokenizer_info``, with which
lm-evaluation-harness needs no tokenizer of its own (docs/serving.md).

Where we differ from OpenAI, on purpose:
  * ``temperature`` defaults to 0 (greedy), not 1: a local model under test
    should give the same answer to the same request unless asked otherwise.
  * ``n`` > 1 works without streaming only; ``max_tokens`` is clamped to
    ``max_tokens_cap`` and to what is left of the context; fields we do not
    use (tools...) are ignored, because clients send many of them; but a request that
    counts on one (``response_format`` JSON, a forced ``tool_choice``) is refused with
    400 rather than answered in plain text.
  * ``logit_bias`` and ``presence_penalty`` / ``frequency_penalty`` steer the choice
    of each token, as OpenAI defines them, also when decoding greedily.
  * generation stops at a ``stop`` string (up to 16 of them, where OpenAI takes 4), and
    ``usage.completion_tokens`` counts the tokens up to the one that completed it.
  * logprobs are the model's own distribution, before temperature, top_p, logit_bias and penalties
    (logprobs.py); up to 20 alternatives on both routes.
  * ``/v1/completions`` takes a string, a list of strings, a list of token ids
    or a list of lists of them (as OpenAI does), at most ``max_waiting`` prompts x ``n``;
    ``echo`` with ``max_tokens: 0`` scores a prompt without generating.

All generation goes through one `Batcher` (continuous batching, batching.py);
routes only submit requests and turn the token ids they get back into text.
"""
from __future__ import annotations

import itertools
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
from ..models.steering import Steering, checked
from ..models.templates import prompt_text
from . import adapters as adapter_table
from .batching import Batcher, Closed, QueueFull
from .generation import Outcome, StopFilter, collect, pieces, submit_all  # noqa: F401 (StopFilter re-exported)
from .logprobs import MAX_LOGPROBS, chat_logprobs, completion_logprobs, generated_rows
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


MAX_STOPS = 16  # OpenAI takes 4; lm-eval's tasks send their own stop strings plus the end-of-text one


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
    logit_bias: dict[str, float] | None = Field(None, description="token id (as a string) -> -100 to 100")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)

    @field_validator("logit_bias")
    @classmethod
    def _bias_by_token_id(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        try:  # the Python API's rules; the vocabulary is checked with the model, in steering()
            checked(sys.maxsize, bias)
        except StropError as exc:
            raise ValueError(str(exc).removeprefix("logit_bias: ")) from None
        return bias

    def steering(self, vocab: int) -> Steering:
        """logit_bias and the penalties for the batcher (a Steering that changes nothing when none is set)."""
        if self.logit_bias:
            _checked_ids([int(k) for k in self.logit_bias], vocab, "logit_bias")
        return checked(vocab, self.logit_bias, self.presence_penalty, self.frequency_penalty)

    @field_validator("stop")
    @classmethod
    def _at_most_sixteen(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences, got {len(stop)}")
        return stop

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def wanted(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def _unconstrained(kind: str, field: str) -> None:
    """A requested output format other than plain text is refused: nothing here constrains the answer."""
    if kind != "text":
        raise ValueError(f"type {kind!r}: this server does not constrain its answers to JSON, so it cannot "
                         f"promise one; leave {field} out (or use type 'text') and check the answer yourself")


def _unforced(choice: str | dict | None) -> str | dict | None:
    """A tool choice a text answer can honour (none, "auto", "none"); a forced call is refused."""
    if choice in (None, "auto", "none"):
        return choice
    raise ValueError("this server answers in text and never with a tool call, so it cannot force one; "
                     "use 'auto' or 'none', or omit it")


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    # Accepted where the answer stays right without them; refused where a client counts on what they promise.
    response_format: dict | None = None
    tool_choice: str | dict | None = None
    function_call: str | dict | None = None  # the older name for tool_choice

    @field_validator("response_format")
    @classmethod
    def _plain_text_only(cls, fmt: dict | None) -> dict | None:
        _unconstrained((fmt or {}).get("type", "text"), "response_format")
        return fmt

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_forced_call(cls, choice: str | dict | None) -> str | dict | None:
        return _unforced(choice)

    def scores(self) -> int | None:
        """How many alternatives the batcher records per token; None: no logprobs."""
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


class ResponseContentPart(TextPart):
    model_config = ConfigDict(extra="ignore")
    type: Literal["input_text", "output_text", "text"]


class ResponseInputMessage(ChatMessage):
    """One item of a Responses API ``input``: a message (``type`` "message" or left out)."""
    type: Literal["message"] = "message"
    content: str | list[ResponseContentPart]


class ResponsesRequest(Sampling):
    """OpenAI's Responses API (``POST /v1/responses``), for text in and text out; the server keeps no state."""
    input: str | list[ResponseInputMessage]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    previous_response_id: str | None = None
    text: dict | None = None
    tool_choice: str | dict | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _messages_only(cls, value):
        for i, item in enumerate(value if isinstance(value, list) else []):
            kind = item.get("type", "message") if isinstance(item, dict) else type(item).__name__
            if kind != "message":
                raise ValueError(f"item {i} is {kind!r}: this server takes text messages only "
                                 "(role and content; content parts of type input_text or output_text)")
        return value

    @field_validator("input")
    @classmethod
    def _something_to_answer(cls, value):
        if (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value):
            raise ValueError("nothing to answer: give a string or a list of messages")
        return value

    @field_validator("previous_response_id")
    @classmethod
    def _no_stored_state(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("this server stores no responses; send the whole conversation in input")
        return value

    @field_validator("text")
    @classmethod
    def _plain_text(cls, value: dict | None) -> dict | None:
        _unconstrained(((value or {}).get("format") or {}).get("type", "text"), "text.format")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _no_forced_call(cls, choice: str | dict | None) -> str | dict | None:
        return _unforced(choice)

    def wanted(self) -> int | None:
        return self.max_output_tokens

    def messages(self) -> list[dict]:
        turns = ([{"role": "user", "content": self.input}] if isinstance(self.input, str)
                 else [m.as_dict() for m in self.input])
        return ([{"role": "system", "content": self.instructions}] if self.instructions else []) + turns


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0, description="0 with echo: score the prompt, generate nothing")
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None  # refused unless empty: an answer that ignored it would look right and not be
    best_of: int | None = None  # refused above 1 (strop returns what it samples, not the best of several)

    @field_validator("suffix")
    @classmethod
    def _no_insertion(cls, suffix: str | None) -> str | None:
        if suffix:
            raise ValueError("text insertion is not supported: this server only continues the prompt; "
                             "omit suffix")
        return suffix

    @field_validator("best_of")
    @classmethod
    def _one_of_one(cls, best_of: int | None) -> int | None:
        if best_of is not None and best_of != 1:
            raise ValueError(f"{best_of}: this server returns the choices it samples (ask for several with n), "
                             "not the best of several; omit best_of or use 1")
        return best_of

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, prompt):
        if isinstance(prompt, list) and (not prompt or any(isinstance(p, list) and not p for p in prompt)):
            raise ValueError("a prompt is an empty list")
        return prompt

    def prompts(self) -> list[str | list[int]]:
        """The request's prompts, each a string or a list of token ids."""
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return [self.prompt]
        return list(self.prompt)


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tokens: list[int]


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

    vocab = engine.model.get_input_embeddings().num_embeddings

    def submit(req: Sampling, prompts: list[list[int]], adapter: str | None, n: int, **fields) -> list[list]:
        """Every prompt's ``n`` requests, or none at all: a full queue cancels those already in."""
        done: list[list] = []
        try:
            for ids in prompts:
                gen = _gen_args(req, max_tokens_cap, engine.context_length - len(ids))
                done.append(submit_all(batcher, ids, gen, adapter, n, **fields))
        except BaseException as exc:
            for r in (r for reqs in done for r in reqs):
                r.cancel()
            if isinstance(exc, Closed):
                raise APIError(503, "this model is being unloaded; retry shortly", type="server_error",
                               code="model_unloading", headers={"Retry-After": "1"}) from None
            if isinstance(exc, QueueFull):
                raise APIError(429, "the server is busy: too many requests waiting; retry shortly",
                               type="server_busy", code="queue_full", headers={"Retry-After": "1"}) from None
            raise
        return done

    async def run(req: Sampling, prompts: list[list[int]], meta: dict, kind: str, *, top: int | None = None,
                  echo: bool = False, texts: list[str] | None = None, events=None):
        """Answer ``prompts`` (token ids; ``texts``: the same as text, for ``echo``) with ``req``'s settings;
        ``top``: record logprobs with that many alternatives (None: none); ``events``: when streaming, the
        SSE events of the one request (a function of it) in place of the chat and completion chunks."""
        adapter = _lookup(req.model or model_id, served)[0]
        for ids in prompts:
            _check_length(len(ids), engine.context_length, "messages" if kind == "chat" else "prompt")
        n = 1 if req.n is None else req.n
        if req.stream and n != 1:
            raise APIError(400, f"n={n}: use 1 when streaming", param="n")
        if req.stream and len(prompts) != 1:
            raise APIError(400, f"{len(prompts)} prompts: stream one prompt per request", param="prompt")
        if len(prompts) * n > batcher.max_waiting:
            raise APIError(400, f"{len(prompts)} prompts x n={n} is more than this server queues at once "
                           f"({batcher.max_waiting}); send fewer per request", param="prompt")
        groups = submit(req, prompts, adapter, n, logprobs=top, score_prompt=echo and top is not None,
                        steering=req.steering(vocab))
        if req.stream and events is not None:
            return Stream(events(groups[0][0]), groups[0])
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return Stream(_sse(groups[0][0], engine.tok, req.stops(), include_usage, meta, len(prompts[0]), kind,
                               app.state.metrics, top, len(texts[0]) if texts else 0), groups[0])
        reqs = [r for group in groups for r in group]
        try:
            done = [await collect(r, engine.tok, req.stops()) for r in reqs]
        except Exception as exc:  # one row failed in the batcher: this request alone, in OpenAI's shape
            raise APIError(500, f"generation failed: {exc}", type="server_error", code="generation_failed") from None
        finally:  # one choice failing, or the client leaving, ends its siblings too
            for r in reqs:
                r.cancel()
        choices = []
        for i, (r, (text, out)) in enumerate(zip(reqs, done)):
            ids = prompts[i // n]
            if kind == "chat":
                choice = _choice(kind, i, text, out.finish_reason)
                if top is not None:
                    choice["logprobs"] = chat_logprobs(engine.tok, r.scores[:out.tokens], top)
            else:
                prompt = texts[i // n] if echo else ""
                choice = _choice(kind, i, prompt + text, out.finish_reason)
                if top is not None:
                    choice["logprobs"] = completion_logprobs(engine.tok, ids, r.prompt_scores if echo else None,
                                                             generated_rows(r, out), 0 if echo else len(texts[i // n]))
            choices.append(choice)
        completion = sum(out.tokens for _, out in done)
        app.state.metrics.add("completion_tokens_total", completion)
        return {**meta, "object": OBJECT[kind], "choices": choices,
                "usage": _usage(sum(len(ids) for ids in prompts) * n, completion)}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        system = _lookup(req.model or model_id, served)[1]  # each adapter keeps its run's system prompt
        top = req.scores()
        text = prompt_text(engine.tok, [m.as_dict() for m in req.messages], system)
        ids = await run_in_threadpool(lambda: engine.tok(text, add_special_tokens=False)["input_ids"])
        return await run(req, [ids], _meta("chatcmpl", req.model or model_id), "chat", top=top)

    @app.post("/v1/responses")
    async def responses(req: ResponsesRequest):
        if req.n not in (None, 1):
            raise APIError(400, "n: the Responses API answers once per request", param="n")
        system = _lookup(req.model or model_id, served)[1]
        text = prompt_text(engine.tok, req.messages(), system)
        ids = await run_in_threadpool(lambda: engine.tok(text, add_special_tokens=False)["input_ids"])
        meta = _meta("resp", req.model or model_id)
        events = lambda r: _response_events(r, engine.tok, meta, req, len(ids), app.state.metrics)  # noqa: E731
        done = await run(req, [ids], meta, "chat", events=events)
        if req.stream:
            return done
        choice = done["choices"][0]
        return _response(meta, req, choice["message"]["content"], choice["finish_reason"],
                         done["usage"]["prompt_tokens"], done["usage"]["completion_tokens"])

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        if req.wanted() == 0 and not req.echo:
            raise APIError(400, "max_tokens: 0 generates nothing; it is for scoring a prompt with echo: true",
                           param="max_tokens")
        if req.echo and req.stream:
            raise APIError(400, "echo: not with stream; ask without streaming", param="echo")
        raw = req.prompts()
        prompts = await run_in_threadpool(lambda: [_ids(engine.tok, p, vocab) for p in raw])
        # the prompts as text, only where a response shows them (echo) or counts offsets into them (logprobs)
        texts = ([p if isinstance(p, str) else engine.tok.decode(p) for p in raw]
                 if req.echo or req.logprobs is not None else None)
        return await run(req, prompts, _meta("cmpl", req.model or model_id), "text", top=req.logprobs,
                         echo=req.echo, texts=texts)

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> dict:
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "give either prompt (text) or messages (a chat), not both or neither", param="prompt")
        if req.messages is not None:
            text = prompt_text(engine.tok, [m.as_dict() for m in req.messages], engine.system_prompt)
            ids = engine.tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = engine.tok(req.prompt, add_special_tokens=req.add_special_tokens)["input_ids"]
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.context_length}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> dict:
        return {"prompt": engine.tok.decode(_checked_ids(req.tokens, vocab, "tokens"))}

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict:
        tok = engine.tok
        return {"tokenizer_class": type(tok).__name__, "eos_token": tok.eos_token, "bos_token": tok.bos_token,
                "pad_token": tok.pad_token, "chat_template": getattr(tok, "chat_template", None),
                "model_max_length": engine.context_length}

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


def _check_length(n_prompt: int, context: int, param: str = "messages") -> None:
    if n_prompt >= context:
        raise APIError(400, f"the prompt has {n_prompt} tokens but the model's context length is {context} tokens",
                       param=param, code="context_length_exceeded")


def _checked_ids(ids: list[int], vocab: int, param: str) -> list[int]:
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise APIError(400, f"token id {bad} is outside the model's vocabulary (0 to {vocab - 1})", param=param)
    return ids


def _ids(tok, prompt: str | list[int], vocab: int) -> list[int]:
    """A completion prompt as token ids: text is tokenized without special tokens added, ids are checked."""
    if isinstance(prompt, str):
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise APIError(400, "the prompt is empty: give some text or token ids", param="prompt")
        return ids
    return _checked_ids(prompt, vocab, "prompt")


def _meta(prefix: str, model: str) -> dict:
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}


def _response(meta: dict, req: ResponsesRequest, text: str | None, finish: str | None, n_prompt: int,
              n_out: int | None) -> dict:
    """A Responses API object; ``finish`` None: still being written (no output or usage yet)."""
    status = "in_progress" if finish is None else "incomplete" if finish == "length" else "completed"
    body = {"id": "resp_" + _hex(meta), "object": "response", "created_at": meta["created"],
            "model": meta["model"], "status": status, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "output": [] if finish is None else [_response_message(meta, text, status)],
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "temperature": req.temperature or 0.0, "top_p": req.top_p or 1.0, "parallel_tool_calls": False,
            "tool_choice": req.tool_choice or "auto", "tools": [], "text": {"format": {"type": "text"}},
            "store": False, "previous_response_id": None, "usage": None}
    if n_out is not None:
        body["usage"] = {"input_tokens": n_prompt, "output_tokens": n_out, "total_tokens": n_prompt + n_out,
                         "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}
    return body


def _hex(meta: dict) -> str:
    """The random part of a request's id, shared by its response and its message."""
    return meta["id"].rsplit("-", 1)[-1]


def _response_message(meta: dict, text: str | None, status: str) -> dict:
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": []}]
    return {"type": "message", "id": "msg_" + _hex(meta), "status": status, "role": "assistant", "content": content}


async def _response_events(r, tok, meta: dict, req: ResponsesRequest, n_prompt: int, metrics):
    """The Responses API's streamed events for one request: created, the message and its text part opened,
    a delta per piece of text, then the text, part, message and response closed (``response.completed``,
    or ``response.incomplete`` when max_output_tokens cut it)."""
    counter = itertools.count()

    def event(kind: str, **fields) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': next(counter), **fields})}\n\n"

    where = {"output_index": 0, "content_index": 0, "item_id": "msg_" + _hex(meta)}
    opened = _response(meta, req, None, None, n_prompt, None)
    yield event("response.created", response=opened)
    yield event("response.in_progress", response=opened)
    yield event("response.output_item.added", output_index=0, item=_response_message(meta, None, "in_progress"))
    yield event("response.content_part.added", **where, part={"type": "output_text", "text": "", "annotations": []})
    out, text = Outcome(), []
    try:
        async for piece in pieces(r, tok, [], out):
            text.append(piece)
            yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
    except Exception as exc:  # headers are already sent: report in-band, as OpenAI does
        yield event("error", code="server_error", message=f"generation failed: {exc}", param=None)
        return
    _count(metrics, out)
    done = _response(meta, req, "".join(text), out.finish_reason, n_prompt, out.tokens)
    message = done["output"][0]
    yield event("response.output_text.done", **where, text=message["content"][0]["text"], logprobs=[])
    yield event("response.content_part.done", **where, part=message["content"][0])
    yield event("response.output_item.done", output_index=0, item=message)
    yield event("response.completed" if done["status"] == "completed" else "response.incomplete", response=done)


def _choice(kind: str, index: int, text: str, finish: str) -> dict:
    if kind == "chat":
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish}
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def _gen_args(req: Sampling, cap: int, room: int) -> dict:
    wanted = req.wanted()
    if wanted == 0:  # echo alone: score the prompt
        return {"max_new_tokens": 0, "temperature": 0.0, "top_p": 1.0, "seed": req.seed}
    return {"max_new_tokens": max(1, min(wanted or cap, cap, room)), "temperature": req.temperature or 0.0,
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


def _chunk(kind: str, meta: dict, text: str | None, finish: str | None = None, *, first: bool = False,
           logprobs: dict | None = None) -> str:
    if kind == "text":
        return _event({**meta, "object": "text_completion",
                       "choices": [{"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish}]})
    delta = {"role": "assistant", "content": ""} if first else ({} if text is None else {"content": text})
    return _event({**meta, "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})


def _count(metrics, out: Outcome) -> None:
    """A finished stream's tokens and time to its first token, in /metrics."""
    metrics.add("completion_tokens_total", out.tokens)
    if out.first_token_s is not None:
        metrics.add("time_to_first_token_seconds_total", out.first_token_s)


async def _sse(req, tok, stops: list[str], include_usage: bool, meta: dict, n_prompt: int, kind: str, metrics,
               top: int | None = None, offset: int = 0):
    """The SSE events of one streamed choice; with ``top``, each chunk carries the logprobs of the tokens
    it completes (``offset``: where the completion starts in the text, for the legacy shape)."""
    out, seen = Outcome(), 0
    if kind == "chat":
        yield _chunk(kind, meta, None, first=True)
    try:
        async for text in pieces(req, tok, stops, out):
            shown = None
            if top is not None:
                rows, seen = req.scores[seen:out.tokens], out.tokens
                shown = (chat_logprobs(tok, rows, top) if kind == "chat"
                         else completion_logprobs(tok, [], None, rows, offset))
                offset += len(text)
            yield _chunk(kind, meta, text, logprobs=shown)
        yield _chunk(kind, meta, None, out.finish_reason)
        _count(metrics, out)
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
