"""Serving the models the service made, through the serving stage's own app.

Each model gets one ``strop.serve.server.create_app`` app (built on first
use, a few kept loaded); a chat request is handed to the app of the model it
names, so streaming, limits and error shapes are exactly ``strop serve``'s.

Unloading the least recently used model (``unload``) stops its batcher and
lets go of its weights: requests in flight on it get ``UNLOAD_GRACE_S`` seconds
to finish, then end with an error; a request that reaches it afterwards is
told the server is busy (429), and its retry loads the model again. The
batcher's thread, and the OpenMP threads torch started for it, end with it.
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..http.errors import APIError
from .store import Store
from .worker import run_dir

CHECKPOINT_MODEL = re.compile(r"(?P<model>ft:.+):ckpt-step-(?P<step>\d+)")
UNLOAD_GRACE_S = 30.0  # how long requests in flight on an unloaded model may still run


class Delegate(Response):
    """Answer a request with another ASGI app, replaying the body this app already read."""

    def __init__(self, app: ASGIApp, body: bytes) -> None:
        super().__init__()
        self.app, self.raw = app, body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": self.raw, "more_body": False}
            return await receive()  # the client's disconnect, for streaming

        await self.app(scope, replay, send)


class Models:
    """Model id -> loaded serving app; base models of any job and every succeeded job's model."""

    def __init__(self, store: Store, runs_root: Path, keep: int = 3) -> None:
        self.store, self.runs_root, self.keep = store, runs_root, keep
        self.apps: OrderedDict[str, ASGIApp] = OrderedDict()
        self.engines: dict[str, object] = {}  # name -> the Engine behind its app
        self.lock = threading.Lock()

    def names(self) -> list[dict]:
        """What /v1/models lists: base models first, then fine-tuned ones."""
        jobs = self.store.list_jobs()
        out, seen = [], set()
        for job in reversed(jobs):
            for name, kind in ((job["model"], "base"), (job["fine_tuned_model"], "fine-tuned")):
                if name and name not in seen:
                    seen.add(name)
                    out.append({"id": name, "object": "model", "created": job["created_at"],
                                "owned_by": "strop" if kind == "base" else "strop-service", "kind": kind})
        return out

    def path_for(self, name: str) -> str:
        checkpoint = CHECKPOINT_MODEL.fullmatch(name)
        if checkpoint:
            return self._checkpoint_path(name, checkpoint["model"], int(checkpoint["step"]))
        if name.startswith("ft:"):
            job = self.store.job_by_model(name)
            if job is None:
                raise APIError(404, f"The model '{name}' does not exist or its job has not succeeded",
                               param="model", code="model_not_found")
            return str(run_dir(self.runs_root, job["id"]) / "final")
        for job in self.store.list_jobs():
            if job["model"] == name:
                # what the job trained from: the alias, or the directory the policy resolved the name to
                # (a name relative to --model-root means nothing outside the service)
                return (job.get("options") or {}).get("base_model") or name
        raise APIError(404, f"The model '{name}' does not exist; this service serves the base models of its jobs "
                            "and the models they made (GET /v1/models)", param="model", code="model_not_found")

    def _checkpoint_path(self, name: str, model: str, step: int) -> str:
        """A sealed checkpoint of any job, as ``<its model name>:ckpt-step-<N>`` (what the checkpoints list shows)."""
        from ..core.manifest import verify_manifest
        from .jobs import model_id

        job = self.store.job_by_short_id(model.rsplit(":", 1)[-1])
        path = run_dir(self.runs_root, job["id"]) / "checkpoints" / f"checkpoint-{step}" if job else None
        if job is None or model_id(job) != model or not path.is_dir() or not verify_manifest(path):
            raise APIError(404, f"The model '{name}' does not exist: no such job, or no complete checkpoint at "
                                f"step {step} (GET /v1/fine_tuning/jobs/ID/checkpoints lists them)",
                           param="model", code="model_not_found")
        return str(path)

    async def app_for(self, name: str | None) -> ASGIApp:
        if not name:
            raise APIError(400, "model: required; name a model from GET /v1/models", param="model")
        path = self.path_for(name)
        return await run_in_threadpool(self._load, name, path)

    def _load(self, name: str, path: str) -> ASGIApp:
        with self.lock:
            if name in self.apps:
                self.apps.move_to_end(name)
                return self.apps[name]
            from ..models.engine import Engine
            from ..serve.server import create_app

            engine = Engine(path)
            app = create_app(engine, model_id=name)  # the service checks the key before handing over
            self.apps[name], self.engines[name] = app, engine
            gone = []
            while len(self.apps) > self.keep:
                old, old_app = self.apps.popitem(last=False)
                gone.append((old_app, self.engines.pop(old)))
        for old_app, old_engine in gone:
            unload(old_app, old_engine, wait=False)
        return app

    def close(self, timeout: float = 5.0) -> None:
        """Unload every model (the service is stopping)."""
        with self.lock:
            gone = [(app, self.engines.pop(name)) for name, app in self.apps.items()]
            self.apps.clear()
        for app, engine in gone:
            unload(app, engine, grace=timeout)


def unload(app, engine, *, grace: float | None = None, wait: bool = True) -> threading.Thread | None:
    """Stop ``app``'s batcher (requests in flight get ``grace`` seconds, default ``UNLOAD_GRACE_S``)
    and let go of ``engine``'s model; ``wait=False`` does it on a short-lived thread, so the caller
    is not held up."""
    grace = UNLOAD_GRACE_S if grace is None else grace

    def work() -> None:
        import gc

        batcher = app.state.batcher
        batcher.close(grace)
        batcher.thread.join()  # it ends at most one decode step after the grace time
        engine.model = None  # nothing decodes with it any more; a late request is told to retry (429)
        _forget_endpoints()
        # the app's routes and closures form reference cycles: collect now, not at some later gc
        gc.collect()
        _trim_heap()

    if wait:
        work()
        return None
    thread = threading.Thread(target=work, name="strop-unload", daemon=True)
    thread.start()
    return thread


def _forget_endpoints() -> None:
    """FastAPI (0.16x) keeps every endpoint and dependency it has classified in module-level
    ``lru_cache``s of 4096 entries (``fastapi.dependencies.models._is_*_cached``), and each
    endpoint's closure holds its app, engine and tokenizer: an unloaded app would stay in
    memory until ~400 more were made. The caches only save an ``inspect`` call; clear them."""
    try:
        from fastapi.dependencies import models as fastapi_models
    except ImportError:
        return
    for name in dir(fastapi_models):
        fn = getattr(fastapi_models, name)
        if name.startswith("_is_") and name.endswith("_cached") and hasattr(fn, "cache_clear"):
            fn.cache_clear()


def _trim_heap() -> None:
    """Hand freed heap pages back to the system (glibc keeps them, in every thread's arena,
    so the process would stay as large as its peak); a no-op elsewhere."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
