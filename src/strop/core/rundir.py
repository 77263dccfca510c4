"""The run directory: the contract between stages (see ARCHITECTURE.md)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def data_report(self) -> Path:
        return self.root / "data_report.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def fingerprint(self) -> Path:
        return self.root / "fingerprint.json"

    @property
    def samples(self) -> Path:
        return self.root / "samples.jsonl"

    def latest_checkpoint(self) -> Path | None:
        """Newest checkpoint whose manifest verifies; a save cut short has none."""
        from .manifest import verify_manifest

        found = []
        for d in self.checkpoints.glob("checkpoint-*"):
            m = re.fullmatch(r"checkpoint-(\d+)", d.name)
            if m:
                found.append((int(m.group(1)), d))
        for _, d in sorted(found, reverse=True):
            if verify_manifest(d):
                return d
        return None

    def read_metrics(self) -> list[dict]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]
