"""The key/value cache's name in a model's forward, across the transformers versions strop allows.

transformers 5.25 renamed forward's ``past_key_values`` argument (and the output field) to ``cache``
and warns on the old name; earlier 5.x releases know only ``past_key_values``. Callers that run a
model step by step pass ``**cache_kw(model, cache)`` and read ``returned_cache(out)``.
"""
from __future__ import annotations

import functools
import inspect


@functools.cache
def _name(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def cache_kw(model, cache) -> dict:
    """``{name: cache}`` for ``model``'s forward (a peft model passes it on to the model it wraps)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {_name(type(base)): cache}


def returned_cache(out):
    """The cache a forward returned, under whichever name this transformers gives it."""
    cache = out.get("cache") if hasattr(out, "get") else None
    return cache if cache is not None else out.past_key_values
