"""What every export records about where it came from (strop version, run, base model, license)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .. import models
from ..core import __version__


def base_model_of(final: Path) -> str | None:
    meta = final / "strop_base.json"
    if meta.is_file():
        return json.loads(meta.read_text())["base_model"]
    cfg = final / "adapter_config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text()).get("base_model_name_or_path")
    return None


def license_of(base: str | None) -> str:
    if base in models.ALIASES:
        return models.ALIASES[base].license
    # A local base directory may carry a model card with a license line; say so when we cannot tell.
    return "unknown (not recorded by the base model; check its model card before redistributing)"


def record(run: Path, final: Path, fmt: str, **extra) -> dict:
    base = base_model_of(final) or str(final)
    return {"strop_version": __version__, "source_run": str(run.resolve()), "format": fmt,
            "base_model": base, "base_license": license_of(base),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
