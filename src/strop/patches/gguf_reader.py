"""Parse a GGUF file's header once per load, not once per object built from it.

Loading a GGUF checkpoint with transformers builds three things from the same
file, the config, the model and the tokenizer, and each one calls
``load_gguf_checkpoint``, which constructs a fresh ``gguf.GGUFReader``. The
reader parses every metadata field element by element through numpy memmap
views; for a SmolLM2 file, whose tokenizer fields hold 49,152 tokens and
48,900 merges, one construction takes 1.9 s here, three per load. Sharing
one brought the suite's GGUF export tests (each loads its file back to verify
it) from 16-21 s to 10-15 s each on this machine.

:func:`one_parse_per_file` hands out one reader per file for the length of a
``with`` block. transformers imports ``GGUFReader`` from ``gguf`` inside
``load_gguf_checkpoint`` at each call, so replacing the package attribute is
what reaches it; the reader is only read from (fields, tensor views), so the
three loads sharing it see what three fresh readers would. The attribute is put
back on exit and the readers are dropped with their memory maps.
"""
from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def one_parse_per_file():
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple, object] = {}

    def shared(path, mode: str = "r"):
        if mode != "r":  # a reader that may write gets its own
            return original(path, mode)
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield readers
    finally:
        gguf.GGUFReader = original
        readers.clear()
