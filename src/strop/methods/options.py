"""What a training run accepts: each field's own check (strop.core.config), then what the method
and objective tables allow. Every way into training or planning (the CLI, the service's jobs and
worker, active learning, the demo) goes through :func:`check`, so a bad option is named before any
model loads. (A grader file is read when a GRPO run starts: strop.train.preference.check.)
"""
from __future__ import annotations

from typing import Any

from ..core.config import TrainConfig, read_train_config
from . import check_options, get
from .objectives import check_objective


def check(cfg: TrainConfig) -> TrainConfig:
    get(cfg.method)  # an unknown method first: every other message depends on it
    cfg.validate()
    check_options(cfg)  # "option X does not apply to --method M"
    check_objective(cfg)
    return cfg


def load_train_config(path: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """The run's config from a YAML file (or none) and command-line overrides, fully checked."""
    return check(read_train_config(path, overrides))
