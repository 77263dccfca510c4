"""The files API's storage: size-limited uploads, validated by the data stage.

A stored file is named by the id the service made up (``file-<hex>``) plus a
suffix from a fixed list, never by anything the client sent, so no upload
name or id can point outside ``workdir/files``.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import BinaryIO

from ..core.errors import StropError
from .store import Store, new_id

FILE_ID = re.compile(r"file-[0-9a-f]{24}")
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
CHUNK = 1 << 20


class TooLarge(StropError):
    pass


def stored_path(root: Path, file_id: str, filename: str) -> Path:
    if not FILE_ID.fullmatch(file_id):  # ids come from the store, but never trust a path part
        raise StropError(f"file id {file_id!r} is malformed")
    return root / f"{file_id}{_suffix(filename)}"


def _suffix(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    if suffix not in SUFFIXES:
        raise StropError(f"{filename}: unknown file type {suffix or '(none)'}; expected one of {', '.join(SUFFIXES)}")
    return suffix


def clean_name(filename: str | None) -> str:
    """The client's name, kept only as a label: no directories, no control characters."""
    name = Path((filename or "upload.jsonl").replace("\\", "/")).name
    name = re.sub(r"[^\w.\- ]", "_", name)[:200]
    return name or "upload.jsonl"


def save_upload(store: Store, root: Path, stream: BinaryIO, filename: str | None, purpose: str,
                max_bytes: int) -> dict:
    """Copy the upload (at most ``max_bytes``), validate it strictly, record it; the file row is returned."""
    if purpose != "fine-tune":
        raise StropError(f"purpose {purpose!r} is not supported; this service takes purpose 'fine-tune'")
    name = clean_name(filename)
    file_id = new_id("file")
    path = stored_path(root, file_id, name)
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    size = 0
    try:
        with tmp.open("wb") as out:
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(f"{name}: larger than the upload limit of {max_bytes} bytes")
                out.write(chunk)
        os.replace(tmp, path)
        rows, fmt = validate(path, name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise
    row = {"id": file_id, "filename": name, "bytes": size, "created_at": int(time.time()), "purpose": purpose,
           "status": "processed", "rows": rows, "format": fmt}
    store.add_file(row)
    return row


def save_result(store: Store, root: Path, filename: str, data: bytes) -> dict:
    """A file the service made for a client (a job's results), listed and downloaded like an upload."""
    file_id = new_id("file")
    path = stored_path(root, file_id, filename)
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    row = {"id": file_id, "filename": filename, "bytes": len(data), "created_at": int(time.time()),
           "purpose": "fine-tune-results", "status": "processed", "rows": None, "format": "csv"}
    store.add_file(row)
    return row


def validate(path: Path, shown: str) -> tuple[int, str]:
    """Strict load with the data stage; messages name the client's file name, not our path."""
    from ..data import ANY_KIND, load

    try:
        ds = load(path, kinds=ANY_KIND)
    except StropError as exc:
        raise StropError(str(exc).replace(str(path), shown)) from None
    return len(ds), ds.format


def file_object(row: dict) -> dict:
    """The hosted API's file object."""
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": row["status"],
            "expires_at": None, "status_details": None}


def delete(store: Store, root: Path, row: dict) -> None:
    stored_path(root, row["id"], row["filename"]).unlink(missing_ok=True)
    store.delete_file(row["id"])


def require(store: Store, file_id: str) -> dict:
    """The file row, or the 404 OpenAI answers for an unknown id."""
    from ..http.errors import APIError

    row = store.get_file(file_id) if FILE_ID.fullmatch(file_id) else None
    if row is None:
        raise APIError(404, f"No such File object: {file_id}", param="id", code="file_not_found")
    return row
