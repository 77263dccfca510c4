"""Merge a labelled selection back into a training file, refusing anything doubtful.

A row counts as labelled when its ``answer`` is non-empty and ``reviewed`` is
yes: the answer column starts out as the model's draft, so an untouched row
must not slip in as if a person had checked it. Inputs are compared to the
selection's fingerprints, so an edited question is caught. The training file
is rewritten through a temporary file and ``os.replace``: it is either the
old file or the old file plus the new rows, never half of either.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import StropError
from ..data.readers import read_rows
from .pool import fingerprint

YES = {"yes", "y", "x", "1", "true", "ok", "done"}


@dataclass
class MergeReport:
    into: str
    merged: int = 0
    corrected: int = 0  # answer differs from the model's draft
    accepted: int = 0  # answer kept as drafted (and marked reviewed)
    unlabelled: list[str] = field(default_factory=list)
    already_present: int = 0
    total_rows: int = 0


def read_selection(path: Path) -> dict[str, dict]:
    if not path.is_file():
        raise StropError(f"{path}: selection file not found; pass --selection FILE.jsonl written by `strop al select`")
    rows = {}
    for line, row in read_rows(path):
        if not isinstance(row, dict) or "id" not in row or "sha" not in row:
            raise StropError(f"{path}:{line}: not a selection row (needs id and sha)")
        rows[str(row["id"])] = row
    return rows


def _check_row(row: dict, where: str, sel: dict | None, problems: dict) -> str | None:
    """Sort one labelled row into a problem bucket; return its answer when it is good."""
    if sel is None:
        problems["unknown"].append(where)
        return None
    text = row.get("input")
    if (text is not None and fingerprint(text) != sel["sha"]) or row.get("sha", sel["sha"]) != sel["sha"]:
        problems["changed"].append(where)
        return None
    answer = str(row.get("answer", "")).strip()
    if not answer or str(row.get("reviewed", "")).strip().lower() not in YES:
        problems["unlabelled"].append(where)
        return None
    if sel.get("choices") and answer not in sel["choices"]:
        problems["invalid"].append(where)
        return None
    return answer


def _refuse(places: list[str], message: str) -> None:
    if places:
        shown = ", ".join(places[:3]) + (" ..." if len(places) > 3 else "")
        raise StropError(f"{len(places)} {message} ({shown})")


def _train_layout(into: Path) -> tuple[str, set[str]]:
    """The training file's row layout (messages or prompt/completion) and the ids it holds."""
    if not into.exists() or not into.read_text(encoding="utf-8").strip():
        return "messages", set()
    if into.suffix.lower() != ".jsonl":
        raise StropError(f"{into}: merge appends to .jsonl training files only")
    layout, ids = None, set()
    for line, row in read_rows(into):
        if layout is None:
            layout = "messages" if "messages" in row else "prompt_completion" if "completion" in row else None
            if layout is None:
                raise StropError(f"{into}:{line}: merge supports messages or prompt/completion rows (fields: {', '.join(row)})")
        if "id" in row:
            ids.add(str(row["id"]))
    return layout, ids


def _train_row(layout: str, item_id: str, sel: dict, answer: str) -> dict:
    if layout == "prompt_completion":
        return {"id": item_id, "prompt": sel["input"], "completion": answer}
    return {"id": item_id, "messages": sel["messages"] + [{"role": "assistant", "content": answer}]}


def append_atomically(into: Path, rows: list[dict]) -> None:
    old = into.read_bytes() if into.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    new = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    tmp = into.with_name(into.name + ".merge-tmp")
    with open(tmp, "wb") as fh:
        fh.write(old + new)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, into)


def merge(labelled: str | Path, into: str | Path, *, selection: str | Path | None = None,
          skip_unlabelled: bool = False, warn=print) -> MergeReport:
    """`strop al merge`: validate ``labelled`` against its selection and append it to ``into``."""
    labelled, into = Path(labelled), Path(into)
    sel_rows = read_selection(Path(selection) if selection else labelled.with_suffix(".jsonl"))
    problems: dict[str, list[str]] = {"unknown": [], "changed": [], "unlabelled": [], "invalid": []}
    good: dict[str, str] = {}
    for line, row in read_rows(labelled):
        where = f"{labelled}:{line}"
        item_id = str(row.get("id", "")) if isinstance(row, dict) else ""
        if not item_id:
            raise StropError(f"{where}: row has no id")
        if item_id in good:
            raise StropError(f"{where}: id {item_id!r} appears twice")
        answer = _check_row(row, where, sel_rows.get(item_id), problems)
        if answer is not None:
            good[item_id] = answer
    _refuse(problems["unknown"], "labels for ids not in the selection")
    _refuse(problems["changed"], "rows whose input differs from what was selected")
    _refuse(problems["invalid"], "answers that are not one of the selection's labels")
    if problems["unlabelled"] and not skip_unlabelled:
        _refuse(problems["unlabelled"],
                "rows are not labelled (empty answer or reviewed not 'yes'); label them or pass --skip-unlabelled")
    layout, present = _train_layout(into)
    report = MergeReport(str(into), unlabelled=problems["unlabelled"])
    new_rows = []
    for item_id, answer in good.items():
        if item_id in present:
            report.already_present += 1
            continue
        new_rows.append(_train_row(layout, item_id, sel_rows[item_id], answer))
        same = answer == str(sel_rows[item_id].get("draft", "")).strip()
        report.accepted += same
        report.corrected += not same
    if not new_rows and not report.already_present:
        raise StropError(f"{labelled}: no labelled rows to merge")
    if new_rows:
        append_atomically(into, new_rows)
    report.merged = len(new_rows)
    report.total_rows = sum(1 for _ in read_rows(into)) if into.exists() else 0
    if report.unlabelled:
        warn(f"warning: skipped {len(report.unlabelled)} unlabelled rows")
    if report.already_present:
        warn(f"warning: {report.already_present} ids were already in {into}; not added again")
    return report
