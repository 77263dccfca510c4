"""What a training run accepts: each field's own check (strop.core.config), then what the method,
objective and grader tables allow. Every way into training (the CLI, the service's worker, active
learning, the demo) goes through :func:`check`, so a bad option is named before any model loads.
"""
from __future__ import annotations

from typing import Any

from .. import methods
from ..core.config import TrainConfig, read_train_config
from ..methods.objectives import check_objective


def check(cfg: TrainConfig) -> TrainConfig:
    methods.get(cfg.method)  # an unknown method first: every other message depends on it
    cfg.validate()
    methods.check_options(cfg)  # "option X does not apply to --method M"
    check_objective(cfg)
    if cfg.objective == "grpo" and cfg.grader:
        from ..graders import load_grader

        load_grader(cfg.grader)  # a malformed grader is named now, not after the model has loaded
    return cfg


def load_train_config(path: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """The run's config from a YAML file (or none) and command-line overrides, fully checked."""
    return check(read_train_config(path, overrides))
