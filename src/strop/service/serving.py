"""Serving the models the service made, through the serving stage's own app.

Each model gets one ``strop.serve.server.create_app`` app (built on first
use, a few kept loaded); a chat request is handed to the app of the model it
names, so streaming, limits and error shapes are exactly ``strop serve``'s.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..serve.server import APIError
from .store import Store
from .worker import run_dir


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
        if name.startswith("ft:"):
            job = self.store.job_by_model(name)
            if job is None:
                raise APIError(404, f"The model '{name}' does not exist or its job has not succeeded",
                               param="model", code="model_not_found")
            return str(run_dir(self.runs_root, job["id"]) / "final")
        if any(job["model"] == name for job in self.store.list_jobs()):
            return name  # an alias or a local directory a job was started from
        raise APIError(404, f"The model '{name}' does not exist; this service serves the base models of its jobs "
                            "and the models they made (GET /v1/models)", param="model", code="model_not_found")

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
            from ..serve.engine import Engine
            from ..serve.server import create_app

            app = create_app(Engine(path), model_id=name)  # the service checks the key before handing over
            self.apps[name] = app
            while len(self.apps) > self.keep:
                self.apps.popitem(last=False)
            return app
