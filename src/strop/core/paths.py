"""Output paths checked before the work starts.

A command that would run for minutes and then fail to write its result has
wasted those minutes, so every command that writes checks its output paths
first: each one exists with the right type or can be created, and the
directory it lands in accepts a new file. The check writes and removes a
probe file instead of asking ``os.access``, which answers yes to root on a
read-only directory and knows nothing of read-only mounts or full quotas.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from .errors import StropError


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists() or parent.is_symlink():
            return parent
    return Path(".")


def _probe(directory: Path, label: str, shown: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".strop-probe-", dir=directory)
    except OSError as exc:
        why = "read-only file system" if exc.errno == errno.EROFS else (exc.strerror or str(exc)).lower()
        raise StropError(f"{label} {shown}: cannot write in {directory} ({why})") from None
    os.close(fd)
    os.unlink(name)


def check_output(path: str | os.PathLike, *, kind: str = "file", label: str = "output",
                 make_parents: bool = True) -> Path:
    """Fail with one line (exit 2) unless ``path`` can be written as a ``kind`` ("file" or "dir").

    A directory may be missing (it will be created with its parents); a file's
    missing parents are created too unless ``make_parents`` is false. Nothing is
    created here: the probe file is removed at once.
    """
    if kind not in ("file", "dir"):
        raise ValueError(kind)
    path = Path(path).expanduser()
    if path.exists():
        if kind == "dir" and not path.is_dir():
            raise StropError(f"{label} {path}: is a file, but a directory is needed here")
        if kind == "file" and path.is_dir():
            raise StropError(f"{label} {path}: is a directory, but a file is needed here")
    elif path.is_symlink():
        raise StropError(f"{label} {path}: is a broken symbolic link")
    base = path if kind == "dir" and path.is_dir() else _nearest_existing(path.parent if kind == "file" else path)
    if not base.is_dir():
        raise StropError(f"{label} {path}: {base} is a file, so nothing can be created under it")
    if kind == "file" and not make_parents and base != path.parent and not path.parent.is_dir():
        raise StropError(f"{label} {path}: directory {path.parent} does not exist")
    _probe(base, label, path)
    return path


def check_outputs(*items: tuple[str | os.PathLike | None, str, str]) -> None:
    """``check_output`` for each (path, kind, label); ``None`` paths are skipped."""
    for path, kind, label in items:
        if path is not None and str(path) != "":
            check_output(path, kind=kind, label=label)


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# The Rust tokenizers library (and other native code) reports a full disk as a plain
# Exception carrying the OS text, e.g. "No space left on device (os error 28)".
DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", f"os error {errno.ENOSPC})",
                  f"os error {errno.EDQUOT})")


def disk_full_reason(exc: BaseException) -> str | None:
    """"No space left on device" when ``exc`` (or what it wraps) means a full disk or quota; else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc.strerror or os.strerror(exc.errno)
        if isinstance(exc, Exception) and not isinstance(exc, StropError):
            text = str(exc)
            low = text.lower()
            if any(t in low for t in DISK_FULL_TEXT):
                return "Disk quota exceeded" if "quota" in low or f"error {errno.EDQUOT})" in low \
                    else "No space left on device"
        exc = exc.__cause__ or exc.__context__
    return None
