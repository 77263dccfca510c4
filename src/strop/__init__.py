"""strop: from raw examples to a fine-tuned model that is measured, explained and served."""
from __future__ import annotations

__version__ = "0.1.0"


def load(name: str, dtype: str = "float32"):
    """Load a run directory, model directory, .gguf file or alias for offline use.

    >>> m = load("runs/demo")            # doctest: +SKIP
    >>> m.generate("Who are you?")       # doctest: +SKIP
    """
    from .serve.engine import load as _load

    return _load(name, dtype)


__all__ = ["__version__", "load"]
