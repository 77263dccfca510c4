"""Cached generation for prompt and prefix tuning under transformers' renamed cache argument.

peft's ``PeftModelForCausalLM.prepare_inputs_for_generation`` decides, step by step, whether to put the
virtual tokens (prompt tuning) or the learned key/value prefix (prefix tuning) in front of the input: only
while ``model_kwargs["past_key_values"]`` is empty. transformers 5.25 calls that argument ``cache``
(models/cache.py), so peft sees no cache at any step and injects the soft prompt again at every
generated token: the first token is right and the rest is noise ("The capital France\\n\\n\\n...").
``use_cache=False``, the workaround users reach for, is no cure for prefix tuning: generate still hands
each step the cache the last one returned, under the new name, beside the fresh prefix peft adds.

:func:`install` wraps one model's ``prepare_inputs_for_generation``: the cache goes into peft's logic
under the name peft reads, and comes out under the name the model's forward takes. Models whose forward
still takes ``past_key_values``, and peft models that are not prompt learning, are left as they are.
``tests/test_patches.py`` checks every step's scores, with the cache and without, against one forward over
the whole answer.
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
    import inspect

    if virtual_positions(model) is None:
        return model
    if NEW not in inspect.signature(type(model.get_base_model()).forward).parameters:  # as models/cache.py tells
        return model
    if getattr(model, "_strop_prompt_cache", False):
        return model
    peft_prepare = model.prepare_inputs_for_generation  # bound: PeftModelForCausalLM's own
    base_prepare = model.base_model_prepare_inputs_for_generation

    # generate() reads these signatures to tell which arguments the model takes: keep *args, **kwargs
    def base_prepare_old_name(*args, **kwargs):
        return _renamed(base_prepare(*args, **_renamed(kwargs, OLD, NEW)), NEW, OLD)

    def prepare_inputs_for_generation(*args, **kwargs):
        if kwargs.get("use_cache") is False:
            # no cache to keep, but generate still hands back the one the last step returned (soft prompt and
            # all): dropped, so peft's own path puts the soft prompt in front of the whole sequence, once
            return _renamed(peft_prepare(*args, **{k: v for k, v in kwargs.items() if k != NEW}), OLD, NEW)
        if kwargs.get(NEW) is None:
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
