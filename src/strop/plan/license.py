"""`strop license`: find the licenses a model, run or dataset carries and judge an intended use.

Facts come from (in this order) a strop run's base model, the built-in alias
table, GGUF metadata (``general.license``), config.json, the model card's
YAML front matter (README.md) and a LICENSE file; for data, ``license``
fields in the rows and dataset cards. Every fact keeps where it was read.
"""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from ..core.errors import StropError
from .license_terms import CONDITIONS, SEVERITY, UNKNOWN, from_text, lookup

NOT_ADVICE = "This is not legal advice: it summarises license texts; ask a lawyer before relying on it."


def _fact(subject: str, license_id: str | None, source: str, lic=None) -> dict:
    lic = lic or (lookup(license_id) if license_id else None)
    return {"subject": subject, "license": lic.key if lic else (license_id or "missing"), "source": source}


def card_license(readme: Path) -> str | None:
    """``license:`` from a Hugging Face card's YAML front matter."""
    text = readme.read_text(encoding="utf-8", errors="replace")
    m = re.match(r"---\s*\n(.*?)\n---", text, re.S)
    if not m:
        return None
    import yaml

    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    if value in ("other", None) and isinstance(meta, dict):
        value = meta.get("license_name", value)
    return str(value) if value else None


def gguf_license(path: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.license")
    return str(field.contents()) if field is not None else None


def _dir_facts(subject: str, d: Path) -> list[dict]:
    facts = []
    cfg = d / "config.json"
    if cfg.is_file() and (lid := json.loads(cfg.read_text()).get("license")):
        facts.append(_fact(subject, lid, f"{cfg} 'license'"))
    for name in ("README.md", "dataset_card.md"):
        if (d / name).is_file() and (lid := card_license(d / name)):
            facts.append(_fact(subject, lid, f"{d / name} front matter"))
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE"):
        if (d / name).is_file():
            lic = from_text((d / name).read_text(encoding="utf-8", errors="replace"))
            facts.append(_fact(subject, None if lic else "unrecognised text", f"{d / name}", lic))
    if (d / "strop_source.json").is_file():  # a converted GGUF remembers where it came from
        src = Path(json.loads((d / "strop_source.json").read_text())["gguf"])
        if src.is_file() and (lid := gguf_license(src)):
            facts.append(_fact(subject, lid, f"{src} general.license"))
    return facts


def model_facts(name: str) -> list[dict]:
    from .. import models

    if name in models.ALIASES:
        alias = models.ALIASES[name]
        facts = [_fact(name, alias.license, "strop's alias table (src/strop/models/__init__.py)")]
        spec = importlib.util.find_spec(alias.package)  # locate without importing (see models.alias_gguf)
        if spec and spec.submodule_search_locations:
            gguf = Path(list(spec.submodule_search_locations)[0]) / alias.filename
            if gguf.is_file() and (lid := gguf_license(gguf)):
                facts.append(_fact(name, lid, f"{gguf} general.license"))
        return facts
    path = Path(name).expanduser()
    if path.is_dir() and models.is_run_dir(path):
        return _run_facts(path)
    if path.suffix == ".gguf" and path.is_file():
        lid = gguf_license(path)
        return [_fact(name, lid, f"{path} general.license" if lid else f"{path} (no general.license)")]
    if path.is_dir():
        return _dir_facts(name, path)
    raise StropError(f"{name}: not a model alias, model directory, .gguf file or strop run")


def _run_facts(run: Path) -> list[dict]:
    """A run inherits its base model's license (and records its data's in summary.json)."""
    base_file = run / "final" / "strop_base.json"
    if base_file.is_file():
        base = json.loads(base_file.read_text())["base_model"]
    else:
        import yaml

        base = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("base_model", "")
    facts = [dict(f, source=f"{f['source']} (base model of run {run})") for f in model_facts(base)] if base else []
    return facts + _dir_facts(str(run), run / "final")


def data_facts(path_str: str) -> list[dict]:
    path = Path(path_str)
    if path.is_dir():
        facts = _dir_facts(path_str, path)
        info = path / "dataset_info.json"
        if info.is_file() and (lid := json.loads(info.read_text()).get("license")):
            facts.append(_fact(path_str, lid, f"{info} 'license'"))
        return facts or [_fact(path_str, None, f"{path}: no card, LICENSE or license field")]
    if not path.is_file():
        raise StropError(f"{path}: data file not found")
    return _row_facts(path) or [_fact(path_str, None, f"{path}: no 'license' field in any row and no card")]


def _row_facts(path: Path) -> list[dict]:
    seen: dict[str, int] = {}
    if path.suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8", errors="replace")
        rows = json.loads(text) if path.suffix == ".json" and text.lstrip().startswith("[") else \
            [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
        for i, row in enumerate(rows, 1):
            if isinstance(row, dict) and row.get("license"):
                seen.setdefault(str(row["license"]), i)
    facts = [_fact(str(path), lid, f"{path}:{line} 'license' field") for lid, line in seen.items()]
    card = path.parent / "README.md"
    if card.is_file() and (lid := card_license(card)):
        facts.append(_fact(str(path), lid, f"{card} front matter"))
    return facts


def judge(facts: list[dict], use: str) -> dict:
    """Per fact and overall verdict for the use; the strictest fact decides."""
    rows, conditions = [], []
    for f in facts:
        lic = lookup(f["license"])
        verdict = getattr(lic, use) if lic else UNKNOWN
        rows.append(dict(f, verdict=verdict, name=lic.name if lic else None, text=lic.source if lic else None,
                         conditions=list(lic.conditions) if lic and verdict == CONDITIONS else []))
        conditions += [c for c in rows[-1]["conditions"] if c not in conditions]
    overall = max((r["verdict"] for r in rows), key=SEVERITY.__getitem__, default=UNKNOWN)
    return {"use": use, "verdict": overall, "facts": rows, "conditions": conditions, "note": NOT_ADVICE}


def check(model: str, data: list[str] | None = None, use: str = "commercial") -> dict:
    if use not in ("commercial", "research"):
        raise StropError(f"option use: {use!r} is not one of commercial, research")
    facts = model_facts(model) or [_fact(model, None, "no license found in the model's files")]
    for d in data or []:
        if d:
            facts += data_facts(d)
    return judge(facts, use)


def format_check(r: dict) -> str:
    lines = [f"intended use: {r['use']}  ->  {r['verdict'].upper()}", ""]
    for f in r["facts"]:
        lines.append(f"  {f['subject']}: {f['license']} ({f['verdict']})")
        lines.append(f"      read from {f['source']}" + (f"; terms: {f['text']}" if f["text"] else ""))
    if r["conditions"]:
        lines += ["", "conditions:"] + [f"  - {c}" for c in r["conditions"]]
    if r["verdict"] == UNKNOWN:
        lines += ["", "at least one license is missing or not one strop knows: ask a lawyer"]
    return "\n".join(lines + ["", r["note"]])
