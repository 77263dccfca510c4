"""The HTTP routes the official `tinker` SDK calls (TINKER_BASE_URL), on strop's training stack.

Every operation answers at once with a future id; the SDK then polls ``/api/v1/retrieve_future``,
which waits up to ``POLL_S`` for the result (the SDK re-polls at once on ``try_again``). Results are
kept, so a client that retries a poll, or resubmits a request with the same ``seq_id``, gets the same
answer and the work runs once. forward_backward requests and the results of forward_backward and
sample are protobuf (the SDK's own ``tinker_public`` schema); everything else is JSON.

Saved weights live under ``--workdir`` (``<run>/weights/<name>`` with the optimizer state,
``<run>/sampler_weights/<name>``), so a restarted server loads every saved state again.
"""
from __future__ import annotations

import itertools
import queue
import re
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..core.errors import StropError
from ..http.errors import APIError, install_error_handlers
from ..http.guard import Guard, allowed_hosts
from .backend import Base, Client, Datum, Scores, UserError, check_base, checkpoint_info

POLL_S = 30.0  # under the SDK's 45 s poll timeout
KEEP = 4096  # finished futures kept for the client's re-polls and retries; older ones are dropped
SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")  # session, run and checkpoint names: no '/', no leading dot
PROTO = "application/x-protobuf"
MAX_TOPK = 64  # top-k logprobs per position: a (length, k) matrix per sequence
MAX_TARGETS = 1024  # target_prompt_logprobs: token ids asked for per prompt position
CLIENT_CONFIG = {"pjwt_auth_enabled": False, "use_pyqwest_transport": False, "proto_compress_fwdbwd": False,
                 "parallel_fwdbwd_chunks": False, "fwdbwd_max_chunk_len": 1 << 20,
                 "fwdbwd_max_chunk_bytes_count": 1 << 30, "sample_use_retrieve_futures": False,
                 "custom_loss_server_side": False, "sample_join_sampling_session": False}


@dataclass
class Future:
    done: threading.Event = field(default_factory=threading.Event)
    body: bytes | dict | None = None


class Worker:
    """One thread per base model: its requests run in arrival order."""

    def __init__(self, base_name: str) -> None:
        self.base_name, self.base = base_name, None
        self.jobs: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, daemon=True, name=f"tinker-{base_name}").start()

    def submit(self, future: Future, work) -> None:
        self.jobs.put((future, work))

    def _run(self) -> None:
        while True:
            future, work = self.jobs.get()
            try:
                if self.base is None:
                    self.base = Base(self.base_name)
                future.body = work(self.base)
            except (UserError, StropError) as exc:
                future.body = {"error": str(exc), "category": "user"}
            except Exception as exc:  # noqa: BLE001 - reported to the client as a server failure
                future.body = {"error": f"{type(exc).__name__}: {exc}", "category": "server"}
            future.done.set()


class Server:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.futures: dict[str, Future] = {}
        # request ids start with this server's boot id, so a poll that outlived a restart is told so
        self.boot = uuid.uuid4().hex[:8]
        self.workers: dict[str, Worker] = {}
        self.clients: dict[str, Client] = {}
        self.samplers: dict[str, tuple[str, str | None, str | None]] = {}  # id -> (base, snapshot key, path)
        self.seq_results: dict[tuple[str, int], dict] = {}  # (model or sampler id, seq_id) -> future reply
        self.adapters = itertools.count()
        self.lock = threading.Lock()

    def unknown_request(self, request_id: str) -> str:
        """Why a polled request id has no result here, in one line."""
        if request_id.startswith(self.boot + "-"):
            return (f"request_id {request_id!r}: its result was dropped (this server keeps the last {KEEP} "
                    "finished requests); send the request again")
        boot, _, rest = request_id.partition("-")
        if len(boot) == len(self.boot) and len(rest) == 36:  # a boot id, then a UUID: another run of a server
            return (f"request_id {request_id!r}: made before this server restarted; results in flight live in "
                    "memory and were lost, saved states (save_state, save_weights_for_sampler) were not: load "
                    "one and send the request again")
        return f"request_id {request_id!r}: no such request on this server"

    def worker(self, base: str) -> Worker:
        with self.lock:
            if base not in self.workers:
                self.workers[base] = Worker(base)
            return self.workers[base]

    def enqueue(self, base: str, work, key: tuple | None = None, **extra) -> dict:
        """Run ``work(base)`` on that base's thread; the reply names the future (once per ``key``)."""
        with self.lock:
            if key is not None and key in self.seq_results:
                return self.seq_results[key]
            request_id = f"{self.boot}-{uuid.uuid4()}"
            future = self.futures[request_id] = Future()
            reply = {"request_id": request_id, **extra}
            if key is not None:
                self.seq_results[key] = reply
            for kept in (self.futures, self.seq_results):  # dicts keep insertion order: the oldest go first
                while len(kept) > KEEP:
                    del kept[next(iter(kept))]
        self.worker(base).submit(future, work)
        return reply

    def for_client(self, client: Client, seq_id, work) -> dict:
        """``enqueue`` for one of a training client's numbered requests (its retries share the seq_id)."""
        return self.enqueue(client.base_model, work, key=(client.model_id, int(seq_id or 0)), model_id=client.model_id)

    def path_dir(self, path: str) -> tuple[str, str, Path]:
        """(run id, kind, directory) for ``tinker://RUN/KIND/NAME``."""
        parts = path.removeprefix("tinker://").split("/") if path.startswith("tinker://") else []
        if len(parts) != 3 or parts[1] not in ("weights", "sampler_weights") or \
                not (SAFE.fullmatch(parts[0]) and SAFE.fullmatch(parts[2])):
            raise APIError(400, f"path {path!r}: expected tinker://RUN/weights/NAME or tinker://RUN/sampler_weights/NAME",
                           param="path")
        return parts[0], parts[1], self.workdir / parts[0].replace(":", "_") / parts[1] / parts[2]

    def run_id(self, req: dict, kind: str, seq_field: str) -> str:
        """``{session}:{kind}:{seq}`` from a client's request; the session id becomes a folder name under --workdir."""
        session = str(req.get("session_id") or "")
        if not SAFE.fullmatch(session):
            raise APIError(400, f"session_id {session!r}: letters, digits, '.', '_', ':' and '-' only", param="session_id")
        try:
            return f"{session}:{kind}:{int(req.get(seq_field, 0))}"
        except (TypeError, ValueError):
            raise APIError(400, f"{seq_field}: not a whole number", param=seq_field) from None

    def client(self, model_id: str) -> Client:
        client = self.clients.get(model_id)
        if client is None:
            raise APIError(404, f"model_id {model_id!r}: no such training client on this server", param="model_id")
        return client


def _decode(request) -> list[Datum]:
    from tinker.proto import tinker_public_pb2 as pb

    dtypes = {pb.DTYPE_FLOAT32: np.float32, pb.DTYPE_INT64: np.int64, pb.DTYPE_INT32: np.int32}
    data = []
    for d in request.data:
        tokens = np.concatenate([np.frombuffer(c.encoded_text.tokens, np.int32) for c in d.model_input
                                 if c.WhichOneof("chunk") == "encoded_text"] or [np.zeros(0, np.int32)])
        if any(c.WhichOneof("chunk") != "encoded_text" for c in d.model_input):
            raise UserError("model_input: this server takes text tokens only (no image or audio chunks)")
        inputs = {}
        for name, t in d.loss_fn_inputs.items():
            if t.WhichOneof("encoding") != "dense":
                values = np.frombuffer(t.sparse_csr.values, dtypes[t.dtype])
                crow = np.frombuffer(t.sparse_csr.crow_indices, np.int64)
                col = np.frombuffer(t.sparse_csr.col_indices, np.int64)
                dense = np.zeros(tuple(t.shape), dtypes[t.dtype])
                for row in range(len(crow) - 1):
                    dense[row, col[crow[row]:crow[row + 1]]] = values[crow[row]:crow[row + 1]]
                inputs[name] = dense
            else:
                inputs[name] = np.frombuffer(t.dense, dtypes[t.dtype]).reshape(tuple(t.shape) or (-1,)).copy()
        data.append(Datum(tokens.astype(np.int64).tolist(), inputs))
    return data


def _fb_output(logprobs: list, metrics: dict) -> bytes:
    from tinker.proto import tinker_public_pb2 as pb

    out = pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord")
    record = out.loss_fn_outputs.add()
    record.num_datums = len(logprobs)
    field_ = record.fields["logprobs"]
    field_.dtype = pb.DTYPE_FLOAT32
    field_.data = b"".join(a.tobytes() for a in logprobs)
    field_.offsets = np.cumsum([0] + [a.nbytes for a in logprobs]).astype(np.int64).tobytes()
    for key, value in metrics.items():
        out.metrics[key] = value
    return out.SerializeToString()


def _whole(req: dict, field: str, default: int, span: range | None = None) -> int:
    """``req[field]`` as an int (in ``span`` when given), else a 400 naming the field."""
    value = req.get(field)
    value = default if value is None else value
    if not isinstance(value, int) or isinstance(value, bool) or (span is not None and value not in span):
        where = f" in {span.start}..{span.stop - 1}" if span is not None else ""
        raise APIError(400, f"{field}: {value!r} is not a whole number{where}", param=field)
    return value


def _scores(req: dict, prompt_len: int) -> Scores:
    """The scores a sample request asks for, checked as the SDK documents them."""
    want = Scores(bool(req.get("prompt_logprobs")), _whole(req, "topk_prompt_logprobs", 0, range(MAX_TOPK + 1)),
                  _whole(req, "topk_sample_logprobs", 0, range(MAX_TOPK + 1)))
    if req.get("prompt_logprobs_last_n") is not None:
        if not (want.prompt or want.topk_prompt):
            raise APIError(400, "prompt_logprobs_last_n: applies to prompt logprobs; set prompt_logprobs",
                           param="prompt_logprobs_last_n")
        want.last_n = _whole(req, "prompt_logprobs_last_n", 0, range(1, prompt_len))  # 1..len(prompt) - 1
    return want


def _targets(spec, prompt_len: int):
    """``target_prompt_logprobs`` as (shape, CSR rows or None, [(row, column, token id)]), checked."""
    if not spec:
        return None
    field = "target_prompt_logprobs"
    if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list) or len(spec["shape"]) != 2:
        raise APIError(400, f"{field}: expected an int64 tensor of shape [len(prompt) - 1, K]", param=field)
    rows, k = spec["shape"]
    if rows != prompt_len - 1 or not isinstance(k, int) or not 0 <= k <= MAX_TARGETS:
        raise APIError(400, f"{field}: shape {spec['shape']} for a {prompt_len}-token prompt; expected "
                       f"[{prompt_len - 1}, K] with K at most {MAX_TARGETS}", param=field)
    try:
        data = np.asarray(spec.get("data") or [], np.int64).reshape(-1)
        crow, col = spec.get("sparse_crow_indices"), spec.get("sparse_col_indices")
        if crow is not None:
            crow, col = np.asarray(crow, np.int64), np.asarray(col, np.int64)
            if (len(crow) != rows + 1 or len(col) != len(data) or crow[0] != 0 or crow[-1] != len(data)
                    or np.any(np.diff(crow) < 0) or np.any((col < 0) | (col >= k))):
                raise ValueError
            cells = [(i, int(col[at]), int(data[at])) for i in range(rows) for at in range(crow[i], crow[i + 1])]
        else:
            cells = [(i, j, int(t)) for (i, j), t in np.ndenumerate(data.reshape(rows, k)) if t != -1]
    except (TypeError, ValueError):
        raise APIError(400, f"{field}: the data does not fit its shape and layout", param=field) from None
    return (rows, k), (crow, col) if crow is not None else None, cells


def _target_tensor(targets, values: list[float]):
    """The proto Tensor answering ``target_prompt_logprobs``: its shape and layout, NaN where nothing was asked."""
    from tinker.proto import tinker_public_pb2 as pb

    (rows, k), csr, cells = targets
    out = pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[rows, k])
    if csr is not None:
        out.sparse_csr.values = np.asarray(values, np.float32).tobytes()
        out.sparse_csr.crow_indices, out.sparse_csr.col_indices = csr[0].tobytes(), csr[1].tobytes()
    else:
        dense = np.full((rows, k), np.nan, np.float32)
        for (i, j, _), v in zip(cells, values):
            dense[i, j] = v
        out.dense = dense.tobytes()
    return out


def _topk_proto(message, matrices) -> None:
    ids, lps = matrices
    message.length, message.k = ids.shape
    message.token_ids, message.logprobs = ids.tobytes(), lps.tobytes()


def _sample_output(samples: list, prompt_logprobs: list | None, topk_prompt=None, targets=None) -> bytes:
    from tinker.proto import tinker_public_pb2 as pb

    out = pb.SampleResponse()
    for sample in samples:
        seq = out.sequences.add()
        seq.stop_reason = pb.STOP_REASON_STOP if sample.stopped else pb.STOP_REASON_LENGTH
        seq.tokens = np.asarray(sample.tokens, np.int32).tobytes()
        seq.logprobs = np.asarray(sample.logprobs, np.float32).tobytes()
        if sample.topk is not None:
            _topk_proto(seq.topk_sampled_logprobs, sample.topk)
    if prompt_logprobs is not None:
        out.prompt_logprobs = np.asarray(prompt_logprobs, np.float32).tobytes()
    if topk_prompt is not None:
        _topk_proto(out.topk_prompt_logprobs, topk_prompt)
    if targets is not None:
        out.target_prompt_logprobs.CopyFrom(targets)
    return out.SerializeToString()


def create_app(workdir: str | Path, *, api_key: str | None = None, bind_host: str | None = None) -> FastAPI:
    srv = Server(Path(workdir))
    app = FastAPI(title="strop tinker", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = srv
    install_error_handlers(app)
    # the SDK sends its key as X-API-Key, and every key starts with tml-: --api-key tml-... on both sides
    app.add_middleware(Guard, api_key=api_key, hosts=allowed_hosts(bind_host) if bind_host else None,
                       key_header="x-api-key", body_limit=lambda path: 1 << 28)  # a batch of datums is large

    async def body(request: Request) -> dict:
        try:
            data = await request.json()
        except ValueError:
            raise APIError(400, "the body must be a JSON object") from None
        if not isinstance(data, dict):
            raise APIError(400, "the body must be a JSON object")
        return data

    @app.post("/api/v1/client/config")
    async def client_config() -> dict:
        return CLIENT_CONFIG

    @app.post("/api/v1/client/dynamic_config")
    async def dynamic_config() -> dict:
        return {"refresh_interval_sec": 300, "sample_cancel_enabled": False}

    @app.post("/api/v1/create_session")
    async def create_session() -> dict:
        return {"type": "create_session", "session_id": f"sess-{uuid.uuid4().hex[:12]}"}

    @app.post("/api/v1/session_heartbeat")
    async def heartbeat() -> dict:
        return {"type": "session_heartbeat"}

    @app.post("/api/v1/telemetry")
    async def telemetry() -> dict:
        return {"status": "accepted"}

    @app.post("/api/v1/sessions/{session_id}/finish")
    async def finish(session_id: str) -> dict:
        return {}

    @app.get("/api/v1/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/api/v1/get_server_capabilities")
    async def capabilities() -> dict:
        from .. import models

        return {"supported_models": [{"model_name": a, "trainable": True, "sampleable": True} for a in models.ALIASES]}

    async def new_client(req: dict, model_id: str, rank: int, seed: int | None, load: tuple | None = None) -> dict:
        from starlette.concurrency import run_in_threadpool

        base = str(req.get("base_model") or "")
        await run_in_threadpool(check_base, base)  # resolving an alias may convert its GGUF file first
        with srv.lock:
            adapter = f"train{next(srv.adapters)}"
        client = Client(model_id, adapter, base, rank)

        def work(b: Base):
            b.add_adapter(adapter, rank, seed)
            if load is not None:
                b.restore(client, load[0], load[1])
            srv.clients[model_id] = client
            return {"model_id": model_id, "type": "create_model"} if load is None else \
                {"model_id": model_id, "path": req["path"], "type": "load_weights"}

        return srv.enqueue(base, work, key=(model_id, 0), model_id=model_id)

    @app.post("/api/v1/create_model")
    async def create_model(request: Request) -> dict:
        req = await body(request)
        lora = req.get("lora_config") or {}
        rank = int(lora.get("rank", 32))
        if not 1 <= rank <= 1024:
            raise APIError(400, f"lora_config.rank: {rank} is outside 1..1024", param="lora_config.rank")
        return await new_client(req, srv.run_id(req, "train", "model_seq_id"), rank, lora.get("seed"))

    @app.post("/api/v1/load_weights")
    async def load_weights(request: Request) -> dict:
        req = await body(request)
        _, kind, directory = srv.path_dir(str(req.get("path", "")))
        if not (directory / "strop_tinker.json").is_file():
            raise APIError(404, f"path {req.get('path')!r}: no saved weights there", param="path")
        info = checkpoint_info(directory)
        if "model_id" in req and "session_id" not in req:  # the older TrainingClient.load_state form
            client = srv.client(req["model_id"])

            def restore(b: Base):
                b.restore(client, directory, bool(req.get("optimizer")))
                return {"path": req["path"], "type": "load_weights"}

            return srv.for_client(client, req.get("seq_id"), restore)
        model_id = srv.run_id(req, "train", "model_seq_id")
        req = {**req, "base_model": info["base_model"]}
        return await new_client(req, model_id, int(info["rank"]), None, (directory, bool(req.get("optimizer"))))

    @app.post("/api/v1/get_info")
    async def get_info(request: Request) -> dict:
        client = srv.client(str((await body(request)).get("model_id")))
        from .. import models

        path = models.resolve(client.base_model)
        arch = "unknown"
        if isinstance(path, Path) and (path / "config.json").is_file():
            import json

            arch = json.loads((path / "config.json").read_text()).get("model_type", "unknown")
        return {"type": "get_info", "model_id": client.model_id, "is_lora": True, "lora_rank": client.rank,
                "model_name": client.base_model,
                "model_data": {"arch": arch, "model_name": client.base_model, "tokenizer_id": str(path)}}

    @app.post("/api/v1/forward_backward")
    async def forward_backward(request: Request) -> dict:
        from tinker.proto import tinker_public_pb2 as pb

        raw = await request.body()
        if request.headers.get("content-encoding") == "zstd":
            import zstandard

            raw = zstandard.ZstdDecompressor().decompress(raw)
        message = pb.ForwardBackwardRequest()
        try:
            message.ParseFromString(raw)
        except Exception:  # noqa: BLE001 - any undecodable body is the client's
            raise APIError(400, "the body is not a tinker_public.ForwardBackwardRequest") from None
        client = srv.client(message.model_id)
        config = {k: (v.number if v.WhichOneof("value") == "number" else v.text) for k, v in message.loss_fn_config_v2.items()} \
            or dict(message.loss_fn_config)

        def work(b: Base):
            outputs, metrics = b.forward_backward(client, _decode(message), message.loss_fn, config, message.forward_only)
            return _fb_output(outputs, metrics)

        return srv.for_client(client, message.seq_id, work)

    @app.post("/api/v1/optim_step")
    async def optim_step(request: Request) -> dict:
        req = await body(request)
        client = srv.client(str(req.get("model_id")))
        adam = {"learning_rate": 1e-4, "beta1": 0.9, "beta2": 0.95, "eps": 1e-12, "weight_decay": 0.0,
                "grad_clip_norm": 0.0} | (req.get("adam_params") or {})
        if (req.get("optimizer_params") or {}).get("type", "adam") not in ("adam", "adamw"):
            raise APIError(400, "optimizer_params.type: this server trains with AdamW only", param="optimizer_params")
        return srv.for_client(client, req.get("seq_id"),
                              lambda b: {"metrics": b.optim_step(client, adam), "type": "optim_step"})

    @app.post("/api/v1/save_weights")
    async def save_weights(request: Request) -> dict:
        req = await body(request)
        client = srv.client(str(req.get("model_id")))
        path = f"tinker://{client.model_id}/weights/{req.get('path') or 'state'}"
        _, _, directory = srv.path_dir(path)

        def work(b: Base):
            b.save(client, directory, with_optimizer=True)
            return {"path": path, "type": "save_weights"}

        return srv.for_client(client, req.get("seq_id"), work)

    @app.post("/api/v1/save_weights_for_sampler")
    async def save_for_sampler(request: Request) -> dict:
        req = await body(request)
        client = srv.client(str(req.get("model_id")))
        name = req.get("path")
        sampler_id = None if name else f"{client.model_id.split(':')[0]}:sample:{req.get('sampling_session_seq_id', 0)}"
        path = f"tinker://{client.model_id}/sampler_weights/{name}" if name else None

        def work(b: Base):
            key = f"snapshot{next(srv.adapters)}"  # the weights as they are now, whatever training does next
            if path:
                directory = srv.path_dir(path)[2]
                b.save(client, directory, with_optimizer=False)  # the snapshot is the file it writes
                b.register_snapshot(key, client.rank, directory / "adapter.safetensors")
                srv.samplers[path] = (client.base_model, key, path)
                return {"path": path, "type": "save_weights_for_sampler"}
            run = client.model_id.replace(":", "_")
            b.snapshot(key, client, srv.workdir / run / "sampler_snapshots" / f"{key}.safetensors")
            srv.samplers[sampler_id] = (client.base_model, key, None)
            return {"sampling_session_id": sampler_id, "type": "save_weights_for_sampler"}

        return srv.for_client(client, req.get("seq_id"), work)

    @app.post("/api/v1/create_sampling_session")
    async def create_sampling_session(request: Request) -> dict:
        req = await body(request)
        sampler_id = srv.run_id(req, "sample", "sampling_session_seq_id")
        if req.get("model_path"):
            path = str(req["model_path"])
            _, _, directory = srv.path_dir(path)
            info = checkpoint_info(directory) if (directory / "strop_tinker.json").is_file() else None
            if info is None:
                raise APIError(404, f"model_path {path!r}: no saved weights there", param="model_path")
            key = f"snapshot{next(srv.adapters)}"
            srv.enqueue(info["base_model"], lambda b: b.register_snapshot(key, int(info["rank"]),
                                                                          directory / "adapter.safetensors"))
            srv.samplers[sampler_id] = (info["base_model"], key, path)
        else:
            from starlette.concurrency import run_in_threadpool

            await run_in_threadpool(check_base, str(req.get("base_model") or ""))
            srv.samplers[sampler_id] = (str(req["base_model"]), None, None)
        return {"type": "create_sampling_session", "sampling_session_id": sampler_id}

    @app.get("/api/v1/samplers/{sampler_id}")
    async def sampler_info(sampler_id: str) -> dict:
        if sampler_id not in srv.samplers:
            raise APIError(404, f"sampler {sampler_id!r}: no such sampling session", param="sampler_id")
        base, _, path = srv.samplers[sampler_id]
        return {"sampler_id": sampler_id, "base_model": base, "model_path": path}

    @app.post("/api/v1/asample")
    async def asample(request: Request) -> dict:
        req = await body(request)
        key = str(req.get("sampling_session_id") or req.get("model_path") or "")
        if key not in srv.samplers:
            raise APIError(404, f"sampling_session_id {key!r}: no such sampling session", param="sampling_session_id")
        base, snapshot, _ = srv.samplers[key]
        n = _whole(req, "num_samples", 1, range(1, 65))
        if req.get("prompt_alt_tokens_k"):
            raise APIError(400, "prompt_alt_tokens_k: not supported by this server", param="prompt_alt_tokens_k")
        prompt = [t for c in (req.get("prompt") or {}).get("chunks", []) for t in c.get("tokens", [])]
        if not prompt:
            raise APIError(400, "prompt: no tokens", param="prompt")
        params, want = req.get("sampling_params") or {}, _scores(req, len(prompt))

        targets = _targets(req.get("target_prompt_logprobs"), len(prompt))
        if targets is not None:
            want.targets = [(i, t) for i, _, t in targets[2]]

        def work(b: Base):
            samples, plp, tplp, values = b.sample(b.sampling_adapter(snapshot) if snapshot else None, prompt, n,
                                                  params, want)
            return _sample_output(samples, plp, tplp, _target_tensor(targets, values) if targets else None)

        seq_id = _whole(req, "seq_id", 0)
        ids = [f"{key}:{seq_id}:{i}" for i in range(n)]
        return srv.enqueue(base, work, key=(key, seq_id), sample_sequence_ids=ids)

    # -- REST reads (RestClient): runs and their checkpoints, from the files under --workdir ------------
    def checkpoints(run_id: str) -> list[dict]:
        import datetime

        root = srv.workdir / run_id.replace(":", "_")
        out = []
        for kind, label in (("weights", "training"), ("sampler_weights", "sampler")):
            for directory in sorted((root / kind).glob("*/strop_tinker.json")):
                folder = directory.parent
                mtime = datetime.datetime.fromtimestamp(directory.stat().st_mtime, datetime.timezone.utc)
                out.append({"checkpoint_id": f"{kind}/{folder.name}", "checkpoint_type": label,
                            "time": mtime.isoformat(), "tinker_path": f"tinker://{run_id}/{kind}/{folder.name}",
                            "size_bytes": sum(f.stat().st_size for f in folder.iterdir()), "public": False})
        return sorted(out, key=lambda c: c["time"])

    @app.get("/api/v1/training_runs/{run_id}/checkpoints")
    async def list_checkpoints(run_id: str) -> dict:
        return {"checkpoints": checkpoints(run_id), "cursor": None}

    @app.delete("/api/v1/training_runs/{run_id}/checkpoints/{kind}/{name}")
    async def delete_checkpoint(run_id: str, kind: str, name: str) -> dict:
        import shutil

        directory = srv.path_dir(f"tinker://{run_id}/{kind}/{name}")[2]
        if not (directory / "strop_tinker.json").is_file():
            raise APIError(404, f"checkpoint {kind}/{name} of {run_id!r}: not on this server", param="checkpoint_id")
        shutil.rmtree(directory)
        return {}

    @app.get("/api/v1/training_runs/{run_id}")
    async def training_run(run_id: str) -> dict:
        import datetime

        found = checkpoints(run_id)
        client = srv.clients.get(run_id)
        if client is None and not found:
            raise APIError(404, f"training run {run_id!r}: not on this server", param="run_id")
        info = {"base_model": client.base_model, "rank": client.rank} if client else \
            checkpoint_info(srv.path_dir(found[-1]["tinker_path"])[2])
        last = {kind: [c for c in found if c["checkpoint_type"] == kind] for kind in ("training", "sampler")}
        return {"training_run_id": run_id, "base_model": info["base_model"], "model_owner": "local", "is_lora": True,
                "lora_rank": info["rank"], "corrupted": False,
                "last_request_time": found[-1]["time"] if found else datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "last_checkpoint": last["training"][-1] if last["training"] else None,
                "last_sampler_checkpoint": last["sampler"][-1] if last["sampler"] else None}

    @app.post("/api/v1/weights_info")
    async def weights_info(request: Request) -> dict:
        path = str((await body(request)).get("tinker_path", ""))
        directory = srv.path_dir(path)[2]
        if not (directory / "strop_tinker.json").is_file():
            raise APIError(404, f"tinker_path {path!r}: no saved weights there", param="tinker_path")
        info = checkpoint_info(directory)
        return {"base_model": info["base_model"], "is_lora": True, "lora_rank": info["rank"],
                "train_unembed": False, "train_mlp": True, "train_attn": True}

    @app.post("/api/v1/retrieve_future")
    async def retrieve_future(request: Request):
        from starlette.concurrency import run_in_threadpool

        request_id = str((await body(request)).get("request_id"))
        future = srv.futures.get(request_id)
        if future is None:
            raise APIError(404, srv.unknown_request(request_id), param="request_id")
        if not await run_in_threadpool(future.done.wait, POLL_S):
            return {"type": "try_again", "request_id": request_id, "queue_state": "active"}
        if isinstance(future.body, bytes):
            return Response(future.body, media_type=PROTO)
        return JSONResponse(future.body)

    return app


def serve(workdir: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          drain_timeout: float = 30.0) -> int:
    import sys

    from ..core.paths import check_output
    from ..http.server import drained, serve_until_stopped

    check_output(workdir, kind="dir", label="--workdir")
    import importlib.util

    if importlib.util.find_spec("tinker") is None:  # its protobuf schema is the wire format
        raise StropError("strop tinker-serve needs the tinker package: pip install 'strop[tinker]' (or tinker==0.38.0)")
    app = create_app(workdir, api_key=api_key, bind_host=host)
    shown = f"[{host}]" if ":" in host else host
    print(f"strop: Tinker-compatible API on http://{shown}:{port} (TINKER_BASE_URL; workdir {Path(workdir).resolve()})",
          file=sys.stderr, flush=True)
    return drained(serve_until_stopped(app, host, port, drain_timeout), drain_timeout, "tinker server")
