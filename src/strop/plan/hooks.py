"""What `strop train` asks of the plan stage: a license gate and the environment record."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import StropError


def check_licenses(cfg) -> dict:
    """Licenses the run inherits; with intended_use commercial, refuse a known conflict."""
    from .license import check

    use = cfg.intended_use or "commercial"
    try:
        result = check(cfg.base_model, data=[cfg.data, cfg.eval_data], use=use)
    except StropError as exc:  # e.g. a hub id: nothing local to read
        return {"use": use, "verdict": "unknown", "error": str(exc)}
    if cfg.intended_use == "commercial" and result["verdict"] == "not allowed" and not cfg.accept_license_risk:
        bad = [f"{f['subject']}: {f['license']} ({f['source']})" for f in result["facts"] if f["verdict"] == "not allowed"]
        raise StropError(f"option intended_use: commercial use is not allowed by {'; '.join(bad)}; "
                         "see `strop license`, or pass --accept-license-risk")
    return {"use": use, "verdict": result["verdict"],
            "licenses": [{k: f[k] for k in ("subject", "license", "verdict", "source")} for f in result["facts"]]}


def write_env(root: Path) -> None:
    from .env import collect

    (Path(root) / "env.json").write_text(json.dumps(collect(), indent=2))
