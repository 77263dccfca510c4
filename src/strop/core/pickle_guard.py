"""Recognise pickle files, which run code when loaded, and refuse them with one line (torch-free).

strop writes no pickles; files from other tools (``pytorch_model.bin``,
``optimizer.pt``, ``rng_state.pth`` ...) are refused unless the user passes
``--allow-pickle``, and even then they are read with ``weights_only=True``.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

from .errors import StropError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Text and safetensors files are never pickles; a safetensors header length can begin with byte 0x80.
NOT_PICKLE = (".safetensors", ".json", ".jsonl", ".md", ".txt", ".jinja", ".yaml", ".model", ".py")


def is_pickle(path: Path) -> bool:
    """A pickle by name, by its opcode stream (protocol 2-5), or as a torch.save zip holding one."""
    if path.suffix in PICKLE_SUFFIXES:
        return True
    if path.suffix in NOT_PICKLE:
        return False
    with path.open("rb") as fh:
        head = fh.read(2)
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith(".pkl") for n in zf.namelist())
    return False


def pickle_files(directory: Path, recursive: bool = True) -> list[Path]:
    files = Path(directory).rglob("*") if recursive else Path(directory).iterdir()
    return sorted(p for p in files if p.is_file() and is_pickle(p))


def refusal(path: Path) -> StropError:
    return StropError(f"{path}: a pickle file, which can run code when loaded; strop does not load pickles "
                      "unless you pass --allow-pickle (then read with weights_only=True)")


def refuse_pickles(directory: Path, allow_pickle: bool) -> None:
    """Refuse ``directory`` (a checkpoint) if it holds any pickle and the user did not allow them."""
    found = [] if allow_pickle else pickle_files(directory)
    if found:
        raise refusal(found[0])


ALLOW_PICKLE_HELP = "load .bin/.pt weights (pickle; read with weights_only=True) when no safetensors exist"
