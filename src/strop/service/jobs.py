"""Fine-tuning job requests: the hosted API's request and object shapes <-> strop's TrainConfig."""
from __future__ import annotations

import dataclasses
import importlib.util
import re
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import StropError
from .policy import ClientPolicy, JobError, scrub
from .store import Store, new_id

JOB_ID = re.compile(r"ftjob-[0-9a-f]{24}")
Auto = Literal["auto"]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: int | Auto | None = Field(None, description="epochs over the training file")
    batch_size: int | Auto | None = None
    learning_rate_multiplier: float | Auto | None = None
    beta: float | Auto | None = None  # dpo only


class MethodBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: MethodBody | None = None
    dpo: MethodBody | None = None
    reinforcement: MethodBody | None = None


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # integrations, metadata...: accepted, not used
    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    strop: dict | None = Field(None, description="strop training keys beyond the hosted API (method, max_steps, lora_r...)")


def preference_available() -> bool:
    from ..config import field_names

    return "objective" in field_names() and importlib.util.find_spec("strop.train.preference") is not None


def _method_and_hypers(req: JobRequest) -> tuple[str, Hyperparameters]:
    if req.method is None:
        return "supervised", req.hyperparameters or Hyperparameters()
    kind = req.method.type
    if kind == "reinforcement" or (kind == "dpo" and not preference_available()):
        raise JobError(f"method type {kind!r} is not supported yet by this strop service; use 'supervised'",
                       param="method.type", code="unsupported_method")
    body = getattr(req.method, kind)
    return kind, (body.hyperparameters if body and body.hyperparameters else req.hyperparameters or Hyperparameters())


def training_values(req: JobRequest, files: dict[str, Path], run_dir: Path,
                    policy: ClientPolicy) -> tuple[dict, str]:
    """The TrainConfig mapping for a request: API fields first, then the ``strop`` extension
    (only the keys ``policy`` lets a client set)."""
    from ..config import TrainConfig

    kind, hp = _method_and_hypers(req)
    values = {"base_model": policy.model_path(req.model), "data": str(files["training_file"]), "output_dir": str(run_dir),
              "eval_data": str(files["validation_file"]) if "validation_file" in files else "",
              "val_size": 0, "report_to": "none", "save_total_limit": 3, "seed": req.seed if req.seed is not None else 42}
    values.update(policy.check_extension(dict(req.strop or {})))
    if isinstance(hp.n_epochs, int):
        values["num_epochs"] = hp.n_epochs
    if isinstance(hp.batch_size, int):
        values["micro_batch_size"] = hp.batch_size
    if isinstance(hp.learning_rate_multiplier, float | int):
        values["learning_rate"] = TrainConfig.learning_rate * hp.learning_rate_multiplier
    if kind == "dpo":
        values["objective"] = "dpo"
        if isinstance(hp.beta, float | int):
            values["beta"] = hp.beta
    return values, kind


def build_config(req: JobRequest, files: dict[str, Path], run_dir: Path, policy: ClientPolicy):
    from ..config import TrainConfig, build

    values, _ = training_values(req, files, run_dir, policy)
    try:
        return build(TrainConfig, values, origin="strop").validate()
    except JobError:
        raise
    except StropError as exc:
        raise JobError(str(exc), param="strop") from None


def check_model(name: str, policy: ClientPolicy) -> str:
    """Only models the operator offers: an alias or a directory under the model root, never a download."""
    return policy.model_path(name)


def base_name(model: str) -> str:
    from ..serve.server import model_id_for

    return re.sub(r"[^\w.\-]", "-", model_id_for(model))


def new_job(job_id: str, req: JobRequest, cfg, kind: str) -> dict:
    return {"id": job_id, "created_at": int(time.time()), "model": req.model, "training_file": req.training_file,
            "validation_file": req.validation_file, "suffix": req.suffix or "", "seed": cfg.seed,
            "hyperparameters": {"n_epochs": cfg.num_epochs, "batch_size": cfg.micro_batch_size,
                                "learning_rate_multiplier": round(cfg.learning_rate / 2e-4, 6)},
            "method": {"type": kind}, "options": dataclasses.asdict(cfg), "status": "validating_files"}


def model_id(job: dict) -> str:
    return f"ft:{base_name(job['model'])}:{job['suffix']}:{job['id'].removeprefix('ftjob-')[:12]}"


def job_object(job: dict) -> dict:
    """The hosted API's fine_tuning.job object."""
    hp = dict(job["hyperparameters"])
    if float(hp["n_epochs"]).is_integer():
        hp["n_epochs"] = int(hp["n_epochs"])
    kind = job["method"]["type"]
    error = job["error"] and {**job["error"], "message": scrub(job["error"].get("message"))}
    return {"id": job["id"], "object": "fine_tuning.job", "created_at": job["created_at"], "error": error,
            "fine_tuned_model": job["fine_tuned_model"], "finished_at": job["finished_at"], "hyperparameters": hp,
            "model": job["model"], "organization_id": "strop", "result_files": [], "seed": job["seed"],
            "status": job["status"], "trained_tokens": job["trained_tokens"], "training_file": job["training_file"],
            "validation_file": job["validation_file"], "estimated_finish": None, "integrations": None,
            "metadata": None, "user_provided_suffix": job["suffix"] or None,
            "method": {"type": kind, kind: {"hyperparameters": hp}}}


def event_object(e: dict) -> dict:
    return {"id": e["id"], "object": "fine_tuning.job.event", "created_at": e["created_at"], "level": e["level"],
            "message": scrub(e["message"]), "type": e["type"], "data": e["data"]}


def create(store: Store, req: JobRequest, files_root: Path, runs_root: Path, policy: ClientPolicy) -> dict:
    from .files import stored_path

    check_model(req.model, policy)
    paths = {}
    for field in ("training_file", "validation_file"):
        file_id = getattr(req, field)
        if file_id is None:
            continue
        row = store.get_file(file_id)
        if row is None:
            raise JobError(f"{field}: no file with id {file_id!r}", param=field, code="invalid_file")
        paths[field] = stored_path(files_root, row["id"], row["filename"])
    job_id = new_id("ftjob")
    kind, _ = _method_and_hypers(req)
    cfg = build_config(req, paths, runs_root / job_id, policy)  # every option error before the job exists
    job = new_job(job_id, req, cfg, kind)
    store.add_job(job)
    store.add_event(job["id"], "Created fine-tuning job")
    store.add_event(job["id"], f"Validating training file: {req.training_file}"
                    + (f" and validation file: {req.validation_file}" if req.validation_file else ""))
    return store.get_job(job["id"])
