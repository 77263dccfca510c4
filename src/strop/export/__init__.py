"""Export stage: merge adapters, write GGUF, verify each artifact against its source.

One table: format name -> function(run, out, **options) -> report dict. Each
export lands in RUN/export/<format>/ (or --output) with strop_export.json
holding provenance and the verification figures. An export that fails
verification (see verify.judge) is kept under a name that says so
(OUT.unverified/, or NAME.unverified.gguf) and raises StropError with exit
status 5 (verify.EXIT_UNVERIFIED).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..core.errors import StropError
from ..core.paths import check_output


def _merged(run: Path, out: Path, **kw) -> dict:
    from .merged import export_merged

    kw.pop("quant", None)
    return export_merged(run, out, **kw)


def _gguf(run: Path, out: Path, **kw) -> dict:
    from .gguf_export import export_gguf

    kw.pop("dtype", None)
    return export_gguf(run, out, **kw)


FORMATS: dict[str, Callable[..., dict]] = {"merged": _merged, "gguf": _gguf}


def export(run: str, fmt: str = "merged", output: str | None = None, **options) -> dict:
    """Export ``run`` as ``fmt`` into ``output`` (default RUN/export/FMT); returns the report."""
    if fmt not in FORMATS:
        raise StropError(f"option --format: {fmt!r} is not one of {', '.join(FORMATS)}")
    root = Path(run)
    if not root.is_dir():
        raise StropError(f"{run}: no such run directory")
    out = Path(output) if output else root / "export" / fmt
    # Before any work: a file where the directory goes, or a read-only place, fails here in one line.
    check_output(out, kind="dir", label="--output" if output else "output")
    if fmt == "gguf" and not (root / "export" / "merged" / "strop_export.json").is_file():
        check_output(root / "export" / "merged", kind="dir", label="merged model (written first)")
    out = Path(os.path.abspath(out))  # OUT.tmp and OUT.unverified are its siblings, even for '.'
    report = FORMATS[fmt](root, out, **options)
    report["output"] = str(out)
    return report
