"""Fine-tuning job requests: the hosted API's request and object shapes <-> strop's TrainConfig."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..core.errors import StropError
from .policy import ClientPolicy, JobError, scrub
from .store import Store, new_id

JOB_ID = re.compile(r"ftjob-[0-9a-f]{24}")
BASE_LEARNING_RATE = 2e-4  # learning_rate_multiplier 1: TrainConfig's default learning rate
Auto = Literal["auto"]


Positive = Annotated[float, Field(gt=0)]
Count = Annotated[int, Field(ge=1)]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: Count | Auto | None = Field(None, description="epochs over the training file")
    batch_size: Count | Auto | None = None
    learning_rate_multiplier: Positive | Auto | None = None
    beta: Positive | Auto | None = None  # dpo only


class ReinforcementHyperparameters(Hyperparameters):
    # accepted and echoed; strop's GRPO has no use for them (docs/service.md)
    compute_multiplier: Positive | Auto | None = None
    eval_interval: Count | Auto | None = None
    eval_samples: Count | Auto | None = None
    reasoning_effort: Literal["default", "low", "medium", "high"] | None = None


class MethodBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    hyperparameters: Hyperparameters | None = None


class ReinforcementBody(BaseModel):
    model_config = ConfigDict(extra="ignore")  # response_format: accepted, not used
    grader: dict = Field(description="an OpenAI grader object (strop.graders)")
    hyperparameters: ReinforcementHyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: MethodBody | None = None
    dpo: MethodBody | None = None
    reinforcement: ReinforcementBody | None = None


def _check_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    """OpenAI's limits: at most 16 pairs, keys up to 64 characters, values up to 512."""
    if value is None:
        return None
    if len(value) > 16:
        raise ValueError(f"at most 16 key-value pairs, got {len(value)}")
    for key, item in value.items():
        if len(key) > 64:
            raise ValueError(f"key {key[:20]!r}...: longer than 64 characters")
        if len(item) > 512:
            raise ValueError(f"value of {key!r}: longer than 512 characters")
    return value


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # integrations: accepted, not used
    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    metadata: dict[str, str] | None = None
    strop: dict | None = Field(None, description="strop training keys beyond the hosted API (method, max_steps, lora_r...)")

    _metadata = field_validator("metadata")(_check_metadata)


def preference_available() -> bool:
    from ..core.config import field_names

    return "objective" in field_names() and importlib.util.find_spec("strop.train.preference") is not None


def _method_and_hypers(req: JobRequest) -> tuple[str, Hyperparameters]:
    if req.method is None:
        return "supervised", req.hyperparameters or Hyperparameters()
    kind = req.method.type
    if kind != "supervised" and not preference_available():
        raise JobError(f"method type {kind!r} is not supported yet by this strop service; use 'supervised'",
                       param="method.type", code="unsupported_method")
    body = getattr(req.method, kind)
    if kind == "reinforcement" and body is None:
        raise JobError("method.reinforcement: required with method type 'reinforcement' (it holds the grader)",
                       param="method.reinforcement")
    return kind, (body.hyperparameters if body and body.hyperparameters else req.hyperparameters or Hyperparameters())


@dataclasses.dataclass
class Source:
    """What a job trains from: a base model, or a fine-tuned model (or one of its checkpoints) trained on."""
    base_model: str
    init_adapter: str = ""
    parent: str | None = None  # the job that made the fine-tuned model
    method: str | None = None  # that job's method, which training on must keep


def source_model(store: Store, runs_root: Path, name: str, policy: ClientPolicy) -> Source:
    """``model`` of a request: an offered base model, or ``ft:...`` / ``ft:...:ckpt-step-N`` of this service."""
    if not name.startswith("ft:"):
        return Source(policy.model_path(name))
    from ..core.manifest import verify_manifest

    model, _, step = name.partition(":ckpt-step-")
    job = store.job_by_short_id(model.rsplit(":", 1)[-1])
    if job is None or model_id(job) != model or (not step and job["status"] != "succeeded"):
        raise JobError(f"model {name!r}: no fine-tuned model of that name on this service (GET /v1/models lists them)",
                       "model", "model_not_found")
    root = runs_root / job["id"]
    path = root / "checkpoints" / f"checkpoint-{step}" if step else root / "final"
    if step and not (step.isdigit() and path.is_dir() and verify_manifest(path)):
        raise JobError(f"model {name!r}: job {job['id']} has no complete checkpoint at step {step}", "model",
                       "model_not_found")
    from ..core.config import ADAPTER_METHODS  # the single-adapter methods: their adapter loads back trainable

    options = job["options"]
    if options.get("method") not in ADAPTER_METHODS:
        raise JobError(f"model {name!r} was trained with method {options.get('method')}; training on from a "
                       f"fine-tuned model needs an adapter method ({', '.join(ADAPTER_METHODS)})", "model",
                       "model_not_supported")
    return Source(options["base_model"], str(path), job["id"], options["method"])


def training_values(req: JobRequest, files: dict[str, Path], run_dir: Path,
                    policy: ClientPolicy, source: Source | None = None) -> tuple[dict, str]:
    """The TrainConfig mapping for a request: API fields first, then the ``strop`` extension
    (only the keys ``policy`` lets a client set)."""
    source = source or Source(policy.model_path(req.model))
    kind, hp = _method_and_hypers(req)
    values = {"base_model": source.base_model, "data": str(files["training_file"]), "output_dir": str(run_dir),
              "eval_data": str(files["validation_file"]) if "validation_file" in files else "",
              "val_size": 0, "report_to": "none", "save_total_limit": 3, "seed": req.seed if req.seed is not None else 42}
    if source.init_adapter:
        values.update(init_adapter=source.init_adapter, method=source.method)
    extension = policy.check_extension(dict(req.strop or {}))
    if source.init_adapter and extension.get("method", source.method) != source.method:
        raise JobError(f"strop.method: training on {req.model!r} keeps its method {source.method}", "strop.method")
    values.update(extension)
    if isinstance(hp.n_epochs, int):
        values["num_epochs"] = hp.n_epochs
    if isinstance(hp.batch_size, int):
        values["micro_batch_size"] = hp.batch_size
    if isinstance(hp.learning_rate_multiplier, float | int):
        values["learning_rate"] = BASE_LEARNING_RATE * hp.learning_rate_multiplier
    if kind == "dpo":
        values["objective"] = "dpo"
        if isinstance(hp.beta, float | int):
            values["beta"] = hp.beta
    if kind == "reinforcement":
        values.update(objective="grpo", grader=json.dumps(checked_grader(req.method.reinforcement.grader, policy)))
    return values, kind


def checked_grader(grader: dict, policy: ClientPolicy) -> dict:
    """The job's grader, checked against what this service runs (python graders only when the operator
    enabled them; model graders only with a grading endpoint)."""
    from ..graders import GraderError, validate

    try:
        return validate(grader, python_enabled=policy.python_graders, model_endpoint=policy.grader_model_endpoint())
    except GraderError as exc:
        param = "method.reinforcement." + exc.param
        raise JobError(f"{param}: {exc.message}", param=param, code="invalid_grader") from None


# TrainConfig option -> the request field a client set it with
API_NAMES = {"num_epochs": "n_epochs", "micro_batch_size": "batch_size", "learning_rate": "learning_rate_multiplier",
             "beta": "beta"}
OPTION = re.compile(r"option (\w+)")
UNKNOWN = re.compile(r"unknown key '([^']+)'")


def build_config(req: JobRequest, files: dict[str, Path], run_dir: Path, policy: ClientPolicy,
                 source: Source | None = None):
    from ..core.config import TrainConfig, build
    from ..methods.options import check

    values, kind = training_values(req, files, run_dir, policy, source)
    try:
        return check(build(TrainConfig, values, origin="strop"))
    except JobError:
        raise
    except StropError as exc:
        raise _request_error(str(exc), req, kind) from None


def _request_error(message: str, req: JobRequest, kind: str) -> JobError:
    """A training option's error, told in the request's own terms: ``hyperparameters.n_epochs``
    for what the client set as a hyperparameter, ``strop.<key>`` for the extension."""
    unknown = UNKNOWN.search(message)
    if unknown:  # API fields map to known options, so an unknown key came in the extension
        return JobError(message, param=f"strop.{unknown.group(1)}")
    found = OPTION.match(message)
    option = found.group(1) if found else None
    if option in API_NAMES and option not in (req.strop or {}):
        name = API_NAMES[option]
        where = f"method.{kind}.hyperparameters" if req.method is not None else "hyperparameters"
        text = f"{where}.{name}" + message[found.end():]
        return JobError(text, param=f"{where}.{name}", code="invalid_hyperparameters")
    if option:
        return JobError(f"strop.{option}" + message[found.end():], param=f"strop.{option}")
    return JobError(message, param="strop" if req.strop else None)


def check_model(name: str, policy: ClientPolicy) -> str:
    """Only models the operator offers: an alias or a directory under the model root, never a download."""
    return policy.model_path(name)


def base_name(model: str) -> str:
    from ..serve.server import model_id_for

    return re.sub(r"[^\w.\-]", "-", model_id_for(model))


ORGANIZATION = "strop"  # the organization part of model names and organization_id: one tenant per service
HYPERPARAMETERS = {"supervised": ("n_epochs", "batch_size", "learning_rate_multiplier"),
                   "dpo": ("n_epochs", "batch_size", "learning_rate_multiplier", "beta"),
                   "reinforcement": ("n_epochs", "batch_size", "learning_rate_multiplier", "compute_multiplier",
                                     "eval_interval", "eval_samples", "reasoning_effort")}
ECHOED = ("compute_multiplier", "eval_interval", "eval_samples", "reasoning_effort")  # accepted, not used


def resolved(cfg, kind: str, asked: dict | None = None) -> dict:
    """The hyperparameters a job trains with, under the API's names (those strop does not use: as asked)."""
    hp = {"n_epochs": cfg.num_epochs, "batch_size": cfg.micro_batch_size,
          "learning_rate_multiplier": round(cfg.learning_rate / BASE_LEARNING_RATE, 6)}
    if kind == "reinforcement":
        hp |= {name: (asked or {}).get(name, "auto") for name in ECHOED}
    return hp | ({"beta": cfg.beta} if kind == "dpo" else {})


def requested(req: JobRequest, kind: str) -> dict:
    """What the client asked for, "auto" where it left the choice to the service."""
    _, hp = _method_and_hypers(req)
    return {name: "auto" if getattr(hp, name, None) is None else getattr(hp, name) for name in HYPERPARAMETERS[kind]}


def new_job(job_id: str, req: JobRequest, cfg, kind: str, parent: str | None = None) -> dict:
    return {"id": job_id, "created_at": int(time.time()), "model": req.model, "training_file": req.training_file,
            "validation_file": req.validation_file, "suffix": req.suffix or "", "seed": cfg.seed,
            "hyperparameters": resolved(cfg, kind, requested(req, kind)), "requested": requested(req, kind),
            "metadata": req.metadata,
            "method": {"type": kind}, "options": dataclasses.asdict(cfg), "status": "validating_files",
            "parent": parent}


def model_id(job: dict) -> str:
    """OpenAI's five parts: ``ft:<base>:<organization>:<suffix>:<id>``; a model trained on from a
    fine-tuned one keeps the first base's name."""
    base = job["model"].split(":")[1] if job["model"].startswith("ft:") else base_name(job["model"])
    return f"ft:{base}:{ORGANIZATION}:{job['suffix']}:{job['id'].removeprefix('ftjob-')[:12]}"


def job_object(job: dict, estimated_finish: int | None = None) -> dict:
    """The hosted API's fine_tuning.job object. Until training starts, hyperparameters left to the
    service read "auto", as OpenAI shows them; from then on, the values in use."""
    started = job["status"] not in ("validating_files", "queued") or job.get("started_at")
    hp = dict(job["hyperparameters"] if started or not job.get("requested") else job["requested"])
    if isinstance(hp.get("n_epochs"), float) and hp["n_epochs"].is_integer():
        hp["n_epochs"] = int(hp["n_epochs"])
    kind = job["method"]["type"]
    error = job["error"] and {**job["error"], "message": scrub(job["error"].get("message"))}
    return {"id": job["id"], "object": "fine_tuning.job", "created_at": job["created_at"], "error": error,
            "fine_tuned_model": job["fine_tuned_model"], "finished_at": job["finished_at"], "hyperparameters": hp,
            "model": job["model"], "organization_id": ORGANIZATION, "result_files": job.get("result_files") or [],
            "seed": job["seed"], "status": job["status"], "trained_tokens": job["trained_tokens"],
            "training_file": job["training_file"], "validation_file": job["validation_file"],
            "estimated_finish": estimated_finish if job["status"] == "running" else None, "integrations": None,
            "metadata": job.get("metadata"), "user_provided_suffix": job["suffix"] or None,
            "method": {"type": kind, kind: {"hyperparameters": hp} | _method_extra(job, kind)}}


def _method_extra(job: dict, kind: str) -> dict:
    """What a method object holds beside its hyperparameters: a reinforcement job's grader."""
    if kind != "reinforcement" or not (job.get("options") or {}).get("grader"):
        return {}
    return {"grader": json.loads(job["options"]["grader"])}


def event_object(e: dict) -> dict:
    return {"id": e["id"], "object": "fine_tuning.job.event", "created_at": e["created_at"], "level": e["level"],
            "message": scrub(e["message"]), "type": e["type"], "data": e["data"]}


def create(store: Store, req: JobRequest, files_root: Path, runs_root: Path, policy: ClientPolicy) -> dict:
    from .files import stored_path

    source = source_model(store, runs_root, req.model, policy)
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
    cfg = build_config(req, paths, runs_root / job_id, policy, source)  # every option error before the job exists
    job = new_job(job_id, req, cfg, kind, source.parent)
    store.add_job(job)
    store.add_event(job["id"], "Created fine-tuning job")
    store.add_event(job["id"], f"Validating training file: {req.training_file}"
                    + (f" and validation file: {req.validation_file}" if req.validation_file else ""))
    return store.get_job(job["id"])


def require(store: Store, job_id: str) -> dict:
    """The job row, or the 404 OpenAI answers for an unknown id."""
    from ..http.errors import APIError

    job = store.get_job(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None:
        raise APIError(404, f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id", code="job_not_found")
    return job
