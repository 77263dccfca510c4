"""The studio: static pages under /studio and the JSON they read under /studio/api.

Pages are plain HTML/JS/CSS shipped in ``static/`` (no CDN, no build step).
Only names listed from that folder at start-up are served, so a URL can
never reach another file.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ..core.errors import StropError
from ..core.rundir import RunDir
from ..http.errors import APIError
from ..http.guard import COOKIE, authorized
from . import files, jobs

STATIC = Path(__file__).parent / "static"
PUBLIC = {"login.html", "style.css", "common.js"}  # what the login page needs before a key is known
PAGES = {p.name: p for p in STATIC.iterdir() if p.suffix in (".html", ".js", ".css", ".svg")}


def _inline_script_hashes() -> str:
    """CSP sources for the pages' own inline scripts, so no other inline script can run."""
    found = set()
    for page in PAGES.values():
        if page.suffix == ".html":
            for body in re.findall(r"<script>(.*?)</script>", page.read_text(), flags=re.S):
                found.add("'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'")
    return " ".join(sorted(found))


STUDIO_CSP = ("default-src 'none'; script-src 'self' " + _inline_script_hashes() + "; style-src 'self' 'unsafe-inline'; "
              "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"


def csp_for(path: str) -> str:
    from ..http.guard import API_CSP

    if path.endswith("/report") and path.startswith("/studio/api/"):
        return REPORT_CSP  # strop's own HTML report: styles inline, no scripts
    return STUDIO_CSP if path.startswith("/studio") and not path.startswith("/studio/api/") else API_CSP


def is_public(method: str, path: str) -> bool:
    """Pages check the key themselves (and send a browser to the login page); login needs no key."""
    if path in ("/studio/login", "/studio/logout"):
        return method == "POST"
    return method == "GET" and path.startswith("/studio") and not path.startswith("/studio/api/")


class Login(BaseModel):
    key: str


def install(app: FastAPI, svc) -> None:
    pages = PAGES

    @app.get("/studio", include_in_schema=False)
    async def studio_root():
        return RedirectResponse("/studio/")

    @app.get("/studio/{name}", include_in_schema=False)
    async def page(name: str, request: Request):
        name = name or "index.html"
        if name not in pages:
            raise APIError(404, f"no studio page {name!r}")
        if name not in PUBLIC and not authorized(request.headers, request.headers.get("cookie", ""), svc.api_key):
            return RedirectResponse(f"/studio/login.html?next=/studio/{name}", status_code=303)
        return FileResponse(pages[name], headers={"Cache-Control": "no-cache"})

    @app.get("/studio/", include_in_schema=False)
    async def index(request: Request):
        return await page("index.html", request)

    @app.post("/studio/login", include_in_schema=False)
    async def login(body: Login, request: Request):
        """Check the key and keep it in a cookie page scripts cannot read (HttpOnly, SameSite=Strict)."""
        if not authorized({"authorization": "Bearer " + body.key}, "", svc.api_key):
            raise APIError(401, "That key is not accepted", code="invalid_api_key")
        response = JSONResponse({"ok": True})
        if svc.api_key is not None:
            response.set_cookie(COOKIE, quote(body.key, safe=""), httponly=True, samesite="strict", path="/",
                                secure=request.url.scheme == "https")
        return response

    @app.post("/studio/logout", include_in_schema=False)
    async def logout():
        response = JSONResponse({"ok": True})
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    _api(app, svc)


def _run(svc, job_id: str) -> tuple[dict, RunDir]:
    from .worker import run_dir

    job = jobs.require(svc.store, job_id)
    return job, RunDir(run_dir(svc.runs_root, job_id))


def _api(app: FastAPI, svc) -> None:
    @app.get("/studio/api/options")
    async def options() -> dict:
        from .. import methods, models

        bases = [m["id"] for m in svc.models.names() if m["kind"] == "base"]
        aliases = [a["alias"] for a in models.describe()]
        return {"methods": list(methods.METHODS), "models": list(dict.fromkeys(bases + aliases)),
                "dpo": jobs.preference_available(), **svc.policy.describe()}

    @app.get("/studio/api/runs/{job_id}")
    async def run_detail(job_id: str) -> dict:
        from .checkpoints import list_checkpoints

        job, run = _run(svc, job_id)
        read = lambda p: json.loads(p.read_text()) if p.is_file() else None  # noqa: E731
        return {"job": jobs.job_object(job), "config": run.config.read_text() if run.config.is_file() else None,
                "data_report": read(run.data_report), "summary": read(run.summary),
                "eval": read(run.eval / "metrics.json"), "eval_report": (run.eval / "report.html").is_file(),
                "exports": sorted(p.name for p in run.export.iterdir()) if run.export.is_dir() else [],
                "checkpoints": list_checkpoints(job, run.root)}

    @app.get("/studio/api/runs/{job_id}/metrics")
    async def run_metrics(job_id: str) -> list[dict]:
        _, run = _run(svc, job_id)
        try:
            return run.read_metrics()
        except ValueError:  # the trainer is appending a row right now
            return []

    @app.get("/studio/api/runs/{job_id}/report")
    async def eval_report(job_id: str):
        _, run = _run(svc, job_id)
        if not (run.eval / "report.html").is_file():
            raise APIError(404, f"run {job_id} has no eval report yet (strop eval RUN_DIR writes one)")
        return FileResponse(run.eval / "report.html")

    @app.get("/studio/api/files/{file_id}/check")
    async def check_file(file_id: str, model: str = Query(...), max_length: int = Query(512, ge=8, le=131072)) -> dict:
        from ..data.check import check
        row = files.require(svc.store, file_id)
        model = jobs.check_model(model, svc.policy)
        path = files.stored_path(svc.files_root, row["id"], row["filename"])
        report = await run_in_threadpool(check, str(path), model, max_length)
        return json.loads(json.dumps(report, default=str).replace(str(path), row["filename"]))

    @app.get("/studio/api/files/{file_id}/preview")
    async def preview_file(file_id: str, model: str = Query(...), n: int = Query(3, ge=1, le=20),
                           max_length: int = Query(512, ge=8, le=131072)) -> list[dict]:
        row = files.require(svc.store, file_id)
        model = jobs.check_model(model, svc.policy)
        path = files.stored_path(svc.files_root, row["id"], row["filename"])
        return await run_in_threadpool(_preview, path, row["filename"], model, n, max_length)

    @app.post("/studio/api/plan")
    async def plan(req: jobs.JobRequest):
        return JSONResponse(await run_in_threadpool(_plan, svc, req))


def _preview(path: Path, shown: str, model: str, n: int, max_length: int) -> list[dict]:
    from .. import models
    from ..data import ANY_KIND, load
    from ..data.preview import spans

    tok = models.load_tokenizer(model)
    out = []
    for c in load(path, kinds=ANY_KIND).conversations[:n]:
        runs, trained, cut = spans(tok, c, max_length)
        out.append({"where": f"{shown}:{c.line}", "trained_tokens": trained, "truncated": cut,
                    "runs": [{"text": t, "trained": k} for t, k in runs]})
    return out


def _plan(svc, req: jobs.JobRequest) -> dict:
    """The `strop plan` estimate for a job form, or why there is none."""
    try:
        from ..plan.estimate import format_plan, make_plan
    except ImportError:
        return {"available": False, "reason": "the estimate is unavailable: this strop has no `strop plan`"}
    try:
        jobs.check_model(req.model, svc.policy)
        row = svc.store.get_file(req.training_file) if files.FILE_ID.fullmatch(req.training_file) else None
        if row is None:
            raise StropError(f"training_file: no file with id {req.training_file!r}")
        paths = {"training_file": files.stored_path(svc.files_root, row["id"], row["filename"])}
        cfg = jobs.build_config(req, paths, svc.runs_root / "plan-preview", svc.policy)
        p = make_plan(cfg)
    except StropError as exc:
        return {"available": False, "reason": f"the estimate is unavailable: {exc}"}
    return {"available": True, "text": format_plan(p), "memory_mb": p["memory_mb"]["total"],
            "fits": p["fit"]["fits"], "total_s": p["time"]["total_s"], "steps": p["time"]["steps"]}
