"""strop: from raw examples to a fine-tuned model that is measured, explained and served."""
from __future__ import annotations

import logging
import os

# transformers >= 5.2x turns on Hugging Face "hub kernels" by default when the
# `kernels` package is present (it is now one of its requirements). They fetch
# compiled code from the hub at run time (no network here, none on an air-gapped
# box, and code strop never audited), and every model.train()/model.eval() call
# re-kernelizes the model, dropping instance forwards such as strop's lean
# training layers. strop keeps them off unless the user turns them on.
os.environ.setdefault("USE_HUB_KERNELS", "0")
# bitsandbytes, on CPUs with AVX-512 BF16, asks the hub for a 4-bit kernel at import whatever that
# variable says (peft imports it whenever it is installed). strop refuses it that request, so no strop
# process contacts the hub (patches/bnb_import.py), and silences the warning bitsandbytes then logs
# before its own CPU code runs, as strop expects.
from .patches.bnb_import import install as _refuse_hub_kernels  # noqa: E402

_refuse_hub_kernels()
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .core import __version__


def load(name: str, dtype: str = "float32"):
    """Load a run directory, model directory, .gguf file or alias for offline use.

    >>> m = load("runs/demo")            # doctest: +SKIP
    >>> m.generate("Who are you?")       # doctest: +SKIP
    """
    from .models.engine import load as _load

    return _load(name, dtype)


__all__ = ["__version__", "load"]
