"""Cached generation for prompt and prefix tuning under transformers' renamed cache argument.

peft's ``PeftModelForCausalLM.prepare_inputs_for_generation`` decides, step by step, whether to put the
virtual tokens (prompt tuning) or the learned key/value prefix (prefix tuning) in front of the input: only
while ``model_kwargs["past_key_values"]`` is empty. transformers 5.25 calls that argument ``cache``
(models/cache.py), so peft sees no cache at any step and injects the soft prompt again at every
generated token: the first token is right and the rest is noise ("The capital France\\n\\n\\n...").
peft's own test suite does not catch it with ``use_cache=False``, which is also the workaround users
reach for, at a quadratic cost.

:func:`install` wraps one model's ``prepare_inputs_for_generation``: the cache goes into peft's logic
under the name peft reads, and comes out under the name the model's forward takes. Models whose forward
still takes ``past_key_values``, and peft models that are not prompt learning, are left as they are.
``tests/test_patches.py`` checks greedy answers with the cache against answers without it.
"""
from __future__ import annotations

OLD, NEW = "past_key_values", "cache"


def _renamed(kwargs: dict, src: str, dst: str) -> dict:
    if src in kwargs:
        kwargs = dict(kwargs)
        kwargs[dst] = kwargs.pop(src)
    return kwargs


def install(model):
    """Fix ``model`` (a peft prompt-learning model) in place where it needs it; returns ``model``."""
    from ..models.cache import _name

    config = getattr(model, "active_peft_config", None)
    if not getattr(config, "is_prompt_learning", False) or _name(type(model.get_base_model())) != NEW:
        return model
    if getattr(model, "_strop_prompt_cache", False):
        return model
    peft_prepare = model.prepare_inputs_for_generation  # bound: PeftModelForCausalLM's own
    base_prepare = model.base_model_prepare_inputs_for_generation

    # generate() reads these signatures to tell which arguments the model takes: keep *args, **kwargs
    def base_prepare_old_name(*args, **kwargs):
        return _renamed(base_prepare(*args, **_renamed(kwargs, OLD, NEW)), NEW, OLD)

    def prepare_inputs_for_generation(*args, **kwargs):
        if kwargs.get(NEW) is None or kwargs.get("use_cache") is False:
            # no cache to keep (use_cache=False still hands back the prefix the last step ran with): peft's own
            # path, which puts the soft prompt in front of the whole sequence at each step, is right
            return peft_prepare(*args, **kwargs)
        model.base_model_prepare_inputs_for_generation = base_prepare_old_name
        try:
            out = peft_prepare(*args, **_renamed(kwargs, NEW, OLD))
        finally:
            model.base_model_prepare_inputs_for_generation = base_prepare
        return _renamed(out, OLD, NEW)

    model.prepare_inputs_for_generation = prepare_inputs_for_generation
    model._strop_prompt_cache = True
    return model


def virtual_positions(model) -> int | None:
    """None for a model with nothing in front of the text; else how many positions its forward puts in front
    of the logits it returns (prompt tuning: its virtual tokens; prefix tuning: 0, the prefix is in the cache).
    Either way its forward cannot continue from a cache strop built: peft puts the soft prompt in front of
    every call."""
    config = getattr(model, "active_peft_config", None)
    if not getattr(config, "is_prompt_learning", False):
        return None
    return 0 if config.peft_type in ("PREFIX_TUNING", "CARTRIDGE") else config.num_virtual_tokens
