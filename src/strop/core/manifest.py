"""Checkpoint manifests: a file list with sha256, written last (torch-free)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(directory: Path) -> dict:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {}
    for p in files:
        _fsync(p)
        entries[str(p.relative_to(directory))] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = {"files": entries}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    _fsync(tmp)
    os.replace(tmp, directory / MANIFEST)  # its existence means every file above is complete
    _fsync(directory)
    return manifest


def manifest_problem(directory: Path) -> str | None:
    """Why ``directory`` cannot be trusted, in a few words; None when its manifest verifies."""
    path = directory / MANIFEST
    if not path.is_file():
        return f"no {MANIFEST}: a save cut short"
    try:
        entries = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    for rel, meta in entries.items():
        f = directory / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != meta["bytes"] or sha256_file(f) != meta["sha256"]:
            return f"{rel} does not match its sha256 in {MANIFEST}"
    return None


def verify_manifest(directory: Path) -> bool:
    return manifest_problem(directory) is None


