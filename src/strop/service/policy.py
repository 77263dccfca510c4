"""What an API client may ask the service for, and what only the operator may allow.

A fine-tuning job runs on the service's host, so every training option a
client can set is sorted into one of three groups here, by name:

* ``API_OWNED``: set through the job's own fields (model, training file, seed...);
  the ``strop`` extension object may not set them, so no client names a path;
* ``OPERATOR_ONLY``: options that run code or read paths on the host; refused
  unless the operator starts the service with ``--allow-client-option NAME``;
* ``CLIENT_SAFE``: everything else (numbers, switches, method names, text).

A new TrainConfig field is in none of them until someone decides, and the
suite fails until then (tests/security/test_client_options.py), so an option
added later cannot reach clients by default.

Models: a built-in alias, or a directory under the operator's ``--model-root``.
Every refusal of a model says the same sentence, whatever the name points
at, so the errors tell a client nothing about the host's files.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import StropError
from ..core.suggest import did_you_mean

API_OWNED = ("base_model", "init_adapter", "data", "eval_data", "output_dir", "resume", "seed", "grader")
OPERATOR_ONLY = {
    "trust_remote_code": "runs the model directory's own Python code",
    "model_revision": "pins the remote code that trust_remote_code runs",
    "allow_pickle": "loads pickled weights, a format that can run code",
    "reward_funcs": "imports and calls any module:function on the host",
    "reward_model": "reads a run directory anywhere on the host",
    "report_to": "sends metrics to a tracking service with the host's credentials (tensorboard and none are always allowed)",
}
CLIENT_SAFE = (
    "method", "max_length", "val_size", "train_on_inputs", "num_epochs", "max_steps", "learning_rate",
    "lr_scheduler_type", "warmup_ratio", "weight_decay", "max_grad_norm", "neftune_noise_alpha", "micro_batch_size",
    "gradient_accumulation_steps", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "use_rslora",
    "num_virtual_tokens", "prompt_tuning_init_text", "ia3_target_modules", "adapter_reduction_factor",
    "adapter_placement", "adapter_non_linearity", "eval_steps", "save_steps", "save_total_limit", "nan_policy",
    "nan_max_consecutive_skips", "loss_spike_factor", "early_stopping_patience", "keep_best", "best_metric",
    "eval_generate_samples", "eval_generate_every", "logging_steps", "dtype", "mixed_precision", "padding_free",
    "gradient_checkpointing", "checkpoint_layers", "score_labelled_only", "per_example_attention", "lean_layers",
    "system_prompt", "enable_thinking", "preserve", "preserve_ratio", "preserve_weight", "preserve_select", "preserve_pack", "preserve_warmup", "intended_use", "accept_license_risk", "objective", "beta", "dpo_loss_type",
    "label_smoothing", "simpo_gamma", "num_generations", "max_completion_length", "temperature",
)
SAFE_REPORT_TO = ("none", "tensorboard")
MODEL_REFUSED = ("model {name!r} is not a built-in alias or a model directory this service offers "
                 "(`strop models` lists the aliases; the operator chooses local models with --model-root)")
HASH = re.compile(r"\b[0-9a-f]{64}\b")


class JobError(StropError):
    """A bad or refused job request; ``param`` names the field, as the hosted API's errors do."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


@dataclass(frozen=True)
class ClientPolicy:
    allowed: frozenset[str] = field(default_factory=frozenset)  # OPERATOR_ONLY options clients may set
    model_root: Path | None = None
    # a client's model name -> the alias or directory the operator trains it as (--model-map), so a
    # script written for the hosted API (model="gpt-4o-mini-2024-07-18") runs unchanged
    model_map: tuple[tuple[str, str], ...] = ()
    python_graders: bool = False  # reinforcement jobs may carry python graders (client code, run sandboxed)
    grader_endpoint: str | None = None  # where score_model / label_model graders send their requests

    @classmethod
    def from_options(cls, names: list[str] | None = None, model_root: str | None = None,
                     model_map: list[str] | None = None, python_graders: bool = False,
                     grader_endpoint: str | None = None) -> "ClientPolicy":
        allowed = set()
        for name in names or []:
            key = name.replace("-", "_")
            if key not in OPERATOR_ONLY:
                hint = did_you_mean(key, OPERATOR_ONLY, n=2)
                why = " (clients may already set it)" if key in CLIENT_SAFE else ""
                raise StropError(f"option --allow-client-option: {name!r} is not an option that needs the "
                                 f"operator's consent{why}{hint} (those are: {', '.join(OPERATOR_ONLY)})")
            allowed.add(key)
        root = None
        if model_root:
            root = Path(model_root).expanduser().resolve()
            if not root.is_dir():
                raise StropError(f"option --model-root: {model_root} is not a directory")
        if python_graders:
            from ..graders import sandbox

            ok, why = sandbox.available()
            if not ok:
                raise StropError(f"option --allow-python-graders: this host cannot sandbox them ({why})")
        return cls(frozenset(allowed), root, tuple(_model_map(model_map or [])), python_graders, grader_endpoint)

    def grader_model_endpoint(self):
        """The graders' ModelEndpoint (the key from STROP_GRADER_API_KEY), or None."""
        if not self.grader_endpoint:
            return None
        import os

        from ..graders import ModelEndpoint

        return ModelEndpoint(self.grader_endpoint, os.environ.get("STROP_GRADER_API_KEY") or "unused")

    def describe(self) -> dict:
        """For /health and the studio: what clients are allowed beyond the defaults."""
        return {"client_options": sorted(self.allowed), "model_root": str(self.model_root) if self.model_root else None,
                "mapped_models": [name for name, _ in self.model_map], "python_graders": self.python_graders,
                "model_graders": self.grader_endpoint is not None}

    def check_extension(self, extra: dict) -> dict:
        """The ``strop`` extension with names normalised, or a JobError naming the first refused key."""
        from ..core.config import field_names

        known = set(field_names())
        out = {}
        for key, value in extra.items():
            name = str(key).replace("-", "_")
            param = f"strop.{key}"
            if name in API_OWNED:
                raise JobError(f"{param}: set through the API's own field, not the strop extension", param)
            refused = name in OPERATOR_ONLY and name not in self.allowed
            if refused and not (name == "report_to" and str(value) in SAFE_REPORT_TO):
                raise JobError(f"{param}: not allowed for API clients: it {OPERATOR_ONLY[name]}; the "
                               f"operator can allow it with `strop service --allow-client-option {name}`",
                               param, "option_not_allowed")
            # an unknown key keeps its spelling for the config builder, which names it with a suggestion
            out[name if name in known else key] = value
        return out

    def model_path(self, name: str) -> str:
        """The alias, or the absolute directory under the model root, that ``name`` stands for."""
        from .. import models

        if name in models.ALIASES:
            return name
        mapped = dict(self.model_map).get(name)
        if mapped is not None:
            return mapped  # the operator's own choice, checked at start-up
        refused = JobError(MODEL_REFUSED.format(name=name), "model", "model_not_found")
        if self.model_root is None or "\0" in name:
            raise refused
        candidate = Path(name).expanduser()
        try:
            path = (candidate if candidate.is_absolute() else self.model_root / candidate).resolve()
        except (OSError, RuntimeError):
            raise refused from None
        if not path.is_relative_to(self.model_root) or not path.is_dir():
            raise refused
        try:
            found = models.resolve(str(path))
        except StropError:
            raise refused from None
        if isinstance(found, str):
            raise refused
        if "trust_remote_code" not in self.allowed and models.custom_code(Path(found)) is not None:
            raise JobError(f"model {name!r} ships its own Python code, which this service does not run "
                              "(the operator can allow it with --allow-client-option trust_remote_code)",
                              "model", "model_not_supported")
        return str(path)


def _model_map(pairs: list[str]) -> list[tuple[str, str]]:
    """``NAME=MODEL`` pairs of --model-map; MODEL is an alias or a model directory, checked now."""
    from .. import models

    out = []
    for pair in pairs:
        name, sep, target = pair.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise StropError(f"option --model-map: {pair!r} is not NAME=MODEL (e.g. gpt-4o-mini-2024-07-18=smollm2-135m-instruct)")
        target = target.strip()
        if target not in models.ALIASES:
            path = Path(target).expanduser().resolve()
            if not path.is_dir():
                raise StropError(f"option --model-map: {target} is neither a built-in alias nor a model directory")
            target = str(path)
        out.append((name.strip(), target))
    return out


def scrub(message: str | None) -> str | None:
    """A job error as clients see it: no code hashes (they are pins only the operator should set)."""
    return HASH.sub("<hash>", message) if message else message
