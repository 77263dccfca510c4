"""The service app: OpenAI's files and fine-tuning jobs API, model serving, and the studio.

``strop service`` and ``strop studio`` both run ``create_service_app``; the
studio's pages and JSON live in studio.py.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict

from ..http.errors import APIError, install_error_handlers
from ..http.guard import Guard, allowed_hosts
from . import files, jobs
from .policy import ClientPolicy
from .serving import Delegate, Models
from .store import ACTIVE, Store
from .worker import Worker, run_dir

DEFAULT_MAX_UPLOAD = 512 * 2**20
MAX_JSON_BODY = 1 << 20  # every request but an upload: job forms, chat messages
MULTIPART_SLACK = 1 << 16  # the multipart framing around an upload's bytes


@dataclass
class Service:
    workdir: Path
    store: Store
    models: Models
    worker: Worker | None
    api_key: str | None
    max_upload_bytes: int
    policy: ClientPolicy = field(default_factory=ClientPolicy)

    @property
    def files_root(self) -> Path:
        return self.workdir / "files"

    @property
    def runs_root(self) -> Path:
        return self.workdir / "runs"


def _errors(app: FastAPI) -> None:
    install_error_handlers(app, {
        jobs.JobError: lambda exc: APIError(400, str(exc), param=exc.param, code=exc.code),
        files.TooLarge: lambda exc: APIError(413, str(exc), param="file", code="file_too_large"),
    })


def create_service_app(workdir: str | Path, *, api_key: str | None = None, concurrency: int = 1,
                       max_upload_bytes: int = DEFAULT_MAX_UPLOAD, start_worker: bool = True,
                       policy: ClientPolicy | None = None, bind_host: str | None = None,
                       webhooks: list | None = None, launcher=None) -> FastAPI:
    """The service app. ``policy``: what API clients may set beyond the safe options (policy.py);
    ``bind_host``: the address it listens on, whose names alone it answers to (http/guard.py);
    ``webhooks``: webhooks.Endpoint list told when a job ends (webhooks.py); ``launcher``: where training
    processes run (launchers.py; default this machine)."""
    from .studio import csp_for, install, is_public

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    store = Store(workdir / "service.db")
    hooks = None
    if webhooks:  # with none configured, deliveries still pending from an earlier start wait for them
        from .webhooks import Webhooks

        hooks = Webhooks(workdir / "service.db", webhooks)
    policy = policy or ClientPolicy()
    # a reinforcement job's python grader must not see the service's files; model graders need the endpoint
    child_env = {"STROP_SANDBOX_HIDE": str(workdir.resolve())}
    if policy.grader_endpoint:
        child_env["STROP_GRADER_BASE_URL"] = policy.grader_endpoint
    worker = (Worker(store, workdir / "files", workdir / "runs", concurrency, hooks=hooks, child_env=child_env,
                     launcher=launcher) if start_worker else None)
    svc = Service(workdir, store, Models(store, workdir / "runs"), worker, api_key, max_upload_bytes, policy)
    app = FastAPI(title="strop service", docs_url=None, redoc_url=None)
    app.state.service = svc
    _errors(app)
    upload_limit = max_upload_bytes + MULTIPART_SLACK
    app.add_middleware(Guard, api_key=api_key, hosts=allowed_hosts(bind_host) if bind_host else None,
                       public=lambda method, path: path == "/health" or is_public(method, path),
                       body_limit=lambda path: upload_limit if path == "/v1/files" else MAX_JSON_BODY,
                       cookie=True, csp=csp_for, too_large=lambda path, limit: (
                           f"upload larger than the limit of {max_upload_bytes} bytes (--max-upload-mb)"
                           if path == "/v1/files" else f"request body over the {limit}-byte limit"))

    @app.get("/health")
    async def health() -> dict:
        alive = worker is None or worker.is_alive()
        return {"status": "ok" if alive else "worker stopped", "worker": alive, "auth": api_key is not None,
                **svc.policy.describe()}

    _files_routes(app, svc)
    _jobs_routes(app, svc)
    _grader_routes(app, svc)
    _model_routes(app, svc)
    install(app, svc)
    if hooks is not None:
        app.router.on_startup.append(hooks.start)
    if worker is not None:
        app.router.on_startup.append(worker.start)
        app.router.on_shutdown.append(worker.shutdown)
    if hooks is not None:
        app.router.on_shutdown.append(hooks.stop)  # after the worker, whose last jobs may still end
    app.router.on_shutdown.append(svc.models.close)  # unload every served model
    return app


# -- files ---------------------------------------------------------------------
def _files_routes(app: FastAPI, svc: Service) -> None:
    @app.post("/v1/files")
    async def upload(request: Request):
        # the guard has refused a declared length over the limit and stops a chunked body there
        form = await request.form(max_files=1, max_fields=4)
        part, purpose = form.get("file"), form.get("purpose")
        if part is None or isinstance(part, str):
            raise APIError(400, "file: required (multipart field 'file')", param="file")
        from starlette.concurrency import run_in_threadpool

        row = await run_in_threadpool(files.save_upload, svc.store, svc.files_root, part.file, part.filename,
                                      str(purpose or ""), svc.max_upload_bytes)
        return files.file_object(row)

    @app.get("/v1/files")
    async def list_files(purpose: str | None = None, after: str | None = None,
                         limit: int = Query(10000, ge=1, le=10000), order: Literal["asc", "desc"] = "desc") -> dict:
        if after is not None and svc.store.get_file(after) is None:
            raise APIError(400, f"after: no file with id {after!r}", param="after")
        rows = svc.store.list_files(purpose, after, limit + 1, order)
        data = [files.file_object(r) for r in rows[:limit]]
        return {"object": "list", "data": data, "has_more": len(rows) > limit,
                "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str) -> dict:
        return files.file_object(files.require(svc.store, file_id))

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str):
        row = files.require(svc.store, file_id)
        return FileResponse(files.stored_path(svc.files_root, row["id"], row["filename"]), filename=row["filename"])

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str) -> dict:
        row = files.require(svc.store, file_id)
        users = [j["id"] for j in svc.store.list_jobs(statuses=ACTIVE) if file_id in (j["training_file"], j["validation_file"])]
        if users:
            raise APIError(400, f"file {file_id} is used by job {users[0]}, which has not finished", param="file_id")
        files.delete(svc.store, svc.files_root, row)
        return {"id": file_id, "object": "file", "deleted": True}


# -- jobs ----------------------------------------------------------------------
def _jobs_routes(app: FastAPI, svc: Service) -> None:
    @app.post("/v1/fine_tuning/jobs")
    async def create_job(req: jobs.JobRequest) -> dict:
        from starlette.concurrency import run_in_threadpool

        job = await run_in_threadpool(jobs.create, svc.store, req, svc.files_root, svc.runs_root, svc.policy)
        if svc.worker is not None:
            svc.worker.wake.set()
        return jobs.job_object(job)

    @app.get("/v1/fine_tuning/jobs")
    async def list_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100)) -> dict:
        rows = svc.store.list_jobs(after=after, limit=limit + 1, metadata=_metadata_filter(request))
        return {"object": "list", "data": [_job_view(svc, j) for j in rows[:limit]], "has_more": len(rows) > limit}

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    async def get_job(job_id: str) -> dict:
        return _job_view(svc, jobs.require(svc.store, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause")
    async def pause(job_id: str) -> dict:
        job = jobs.require(svc.store, job_id)
        if job["status"] != "paused":
            if not svc.store.set_status(job_id, "paused", only_from=("running",)):
                raise APIError(400, f"job {job_id} is {job['status']}; only a running job can be paused",
                               param="fine_tuning_job_id", code="job_not_pausable")
            svc.store.add_event(job_id, "Pause requested; training stops at its next checkpoint")
            _wake(svc)
        return _job_view(svc, svc.store.get_job(job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/resume")
    async def resume(job_id: str) -> dict:
        job = jobs.require(svc.store, job_id)
        if job["status"] != "paused":
            raise APIError(400, f"job {job_id} is {job['status']}; only a paused job can be resumed",
                           param="fine_tuning_job_id", code="job_not_resumable")
        # queued at once; a training process still saving its pause checkpoint finishes first (worker.py)
        if svc.store.set_status(job_id, "queued", only_from=("paused",)):
            svc.store.add_event(job_id, "Resume requested; the job is queued")
            _wake(svc)
        return _job_view(svc, svc.store.get_job(job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    async def cancel(job_id: str) -> dict:
        job = jobs.require(svc.store, job_id)
        if job["status"] != "cancelled":
            if not svc.store.set_status(job_id, "cancelled", only_from=ACTIVE):
                raise APIError(400, f"job {job_id} has already {job['status']}; only a job that has not finished "
                                    "can be cancelled", param="fine_tuning_job_id", code="job_not_cancellable")
            svc.store.add_event(job_id, "Cancellation requested")
            if svc.worker is not None:
                svc.worker.announce(job_id, "cancelled")
            _wake(svc)
        return _job_view(svc, svc.store.get_job(job_id))

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def events(job_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=1000)) -> dict:
        jobs.require(svc.store, job_id)
        rows = svc.store.events(job_id, after, limit + 1)
        return {"object": "list", "data": [jobs.event_object(e) for e in rows[:limit]], "has_more": len(rows) > limit}

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    async def checkpoints(job_id: str, after: str | None = None, limit: int = Query(10, ge=1, le=100)) -> dict:
        from .checkpoints import list_checkpoints

        job = jobs.require(svc.store, job_id)
        rows = list_checkpoints(job, run_dir(svc.runs_root, job_id))
        if after:
            ids = [c["id"] for c in rows]
            rows = rows[ids.index(after) + 1:] if after in ids else []
        return {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit,
                "first_id": rows[0]["id"] if rows else None, "last_id": rows[:limit][-1]["id"] if rows else None}


def _wake(svc: Service) -> None:
    if svc.worker is not None:
        svc.worker.wake.set()


def _job_view(svc: Service, job: dict) -> dict:
    from .progress import estimated_finish

    return jobs.job_object(job, estimated_finish(job, run_dir(svc.runs_root, job["id"])))


def _metadata_filter(request: Request) -> dict[str, str] | None:
    """OpenAI's filter syntax: ``metadata[k]=v`` for each wanted pair, or ``metadata=null`` for jobs without any."""
    params = request.query_params
    pairs = {k[len("metadata["):-1]: v for k, v in params.multi_items() if k.startswith("metadata[") and k.endswith("]")}
    if "metadata" in params:
        if pairs or params["metadata"] != "null":
            raise APIError(400, "metadata: use metadata[key]=value pairs, or metadata=null alone", param="metadata")
        return {}
    return pairs or None


# -- graders -----------------------------------------------------------------------
class GraderRun(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grader: dict
    model_sample: str
    item: dict | None = None


class GraderValidate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grader: dict


def _grader_routes(app: FastAPI, svc: Service) -> None:
    """OpenAI's alpha grader endpoints: try a grader on one sample before training with it."""
    from starlette.concurrency import run_in_threadpool

    from ..graders import GraderError, run, validate

    def checked(call):
        try:
            return call()
        except GraderError as exc:
            raise APIError(400, str(exc), param=exc.param, code="invalid_grader") from None

    @app.post("/v1/fine_tuning/alpha/graders/run")
    async def run_grader(req: GraderRun) -> dict:
        return await run_in_threadpool(checked, lambda: run(
            req.grader, req.model_sample, req.item, python_enabled=svc.policy.python_graders,
            model_endpoint=svc.policy.grader_model_endpoint(), hide=[svc.workdir]))

    @app.post("/v1/fine_tuning/alpha/graders/validate")
    async def validate_grader(req: GraderValidate) -> dict:
        return {"grader": checked(lambda: validate(req.grader, python_enabled=svc.policy.python_graders,
                                                   model_endpoint=svc.policy.grader_model_endpoint()))}


# -- models ----------------------------------------------------------------------
def _model_routes(app: FastAPI, svc: Service) -> None:
    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": svc.models.names()}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict:
        for card in svc.models.names():
            if card["id"] == name:
                return card
        raise APIError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")

    @app.post("/v1/chat/completions")
    @app.post("/v1/responses")
    async def chat(request: Request):
        """Chat and the Responses API, answered by the serving app of the model the body names."""
        import json

        raw = await request.body()
        try:
            name = json.loads(raw).get("model")
        except (ValueError, AttributeError):
            raise APIError(400, "the body must be a JSON object") from None
        return Delegate(await svc.models.app_for(name), raw)


def serve(workdir: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          concurrency: int = 1, max_upload_mb: float = 512, studio: bool = False,
          policy: ClientPolicy | None = None, drain_timeout: float = 30.0, webhooks: list | None = None,
          launcher=None) -> int:
    """Run the service until interrupted (``strop service`` / ``strop studio``); the exit status."""
    from ..core.paths import check_output
    from ..http.server import drained, serve_until_stopped

    check_output(workdir, kind="dir", label="--workdir")
    policy = policy or ClientPolicy()
    app = create_service_app(workdir, api_key=api_key, concurrency=concurrency,
                             max_upload_bytes=int(max_upload_mb * 2**20), policy=policy, bind_host=host,
                             webhooks=webhooks, launcher=launcher)
    shown = f"[{host}]" if ":" in host else host
    where = f"http://{shown}:{port}/studio/" if studio else f"http://{shown}:{port}/v1"
    print(f"strop: service on {where} (workdir {Path(workdir).resolve()})", file=sys.stderr, flush=True)
    if policy.allowed:
        print(f"strop: WARNING: API clients may set {', '.join(sorted(policy.allowed))} "
              "(--allow-client-option), which can run code or read files on this host", file=sys.stderr, flush=True)
    return drained(serve_until_stopped(app, host, port, drain_timeout), drain_timeout, "service")
