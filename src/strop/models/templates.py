"""Render chat templates in a sandbox with a size and a time budget.

A chat template is Jinja code that ships with a model, so it is untrusted.
transformers already renders it in Jinja's ImmutableSandboxedEnvironment
(no attribute tricks, no mutation of lists and dicts); strop keeps that
environment, with the same globals and filters, and adds:

* a template-size limit (``MAX_TEMPLATE_CHARS``);
* an output limit that also applies to every intermediate string or list a
  template builds (``*``, ``+``, ``~``, filters and method calls), checked
  before the allocation where it can be predicted;
* a wall-clock limit (``TIME_LIMIT_S``) checked at every loop iteration,
  call, attribute lookup, filter and output chunk: each ``for`` loop's
  iterable and each ``~`` concatenation is rewritten to pass through a
  budget check before the template is compiled;
* an underscore attribute (``x.__class__``) is an error, not a silent
  empty string.

Any breach is a one-line StropError naming the limit.
"""
from __future__ import annotations

import contextvars
import functools
import re
import time

from ..core.errors import StropError

MAX_TEMPLATE_CHARS = 64 * 1024
MIN_OUTPUT_CHARS = 1_000_000  # the output limit is this or 8x the conversation's text, whichever is larger
TIME_LIMIT_S = 2.0
MAX_POWER = 1024  # largest exponent ``**`` may use
ITER, CONCAT = "strop_budget_iter", "strop_budget_concat"  # reserved global names

_budget: contextvars.ContextVar = contextvars.ContextVar("strop_template_budget", default=None)


class TemplateBudgetError(Exception):
    """Raised inside rendering; rendered as a StropError by ``render_chat``."""


class _Budget:
    def __init__(self, chars: int, seconds: float) -> None:
        self.chars = chars
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateBudgetError(f"rendering took longer than {self.seconds:g} s")

    def size(self, n: int, what: str = "a value") -> None:
        if n > self.chars:
            raise TemplateBudgetError(f"{what} would hold {n:,} characters or items, over the limit of {self.chars:,}")


def _current() -> _Budget:
    # Rendering outside render_chat still gets the size limit (and a fresh clock).
    return _budget.get() or _Budget(MIN_OUTPUT_CHARS, TIME_LIMIT_S)


def _checked(value):
    if isinstance(value, (str, list, tuple, dict)):
        _current().size(len(value))
    return value


def _check_args(args, kwargs) -> None:
    """Refuse a width or count argument larger than the output limit (``'x'.ljust(10**9)``)."""
    budget = _current()
    budget.tick()
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > budget.chars:
            raise TemplateBudgetError(f"a size argument of {a} exceeds the {budget.chars}-character limit")


class _Ticking:
    """A loop's iterable, checking the clock at every iteration; ``len`` passes through for ``loop.length``."""

    def __init__(self, iterable) -> None:
        self.iterable = iterable

    def __iter__(self):
        budget = _current()
        for item in self.iterable:
            budget.tick()
            yield item

    def __len__(self) -> int:
        return len(self.iterable)


def _concat(*parts) -> str:
    budget = _current()
    budget.tick()
    budget.size(sum(len(p) if isinstance(p, str) else 0 for p in parts), "a joined string")
    return _checked("".join(map(str, parts)))


def _predict(name: str, value, args) -> None:
    """Refuse, before allocating, the string operations whose result can dwarf their inputs."""
    budget = _current()
    if name == "replace" and isinstance(value, str) and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        hits = value.count(old) if old else len(value) + 1
        budget.size(len(value) + hits * max(len(new) - len(old), 0), "a replaced string")
    elif name == "join" and isinstance(value, str) and args and isinstance(args[0], (list, tuple, str)):
        items = args[0]  # sep.join(items)
        budget.size(sum(len(str(x)) for x in items) + len(value) * max(len(items) - 1, 0), "a joined string")
    elif name == "indent" and isinstance(value, str) and args and isinstance(args[0], str):
        budget.size(len(value) + (value.count("\n") + 1) * len(args[0]), "an indented string")
    elif name == "format" and isinstance(value, str):
        _check_widths(value)


def _guard_filter(name: str, func):
    from jinja2.utils import _PassArg

    skip = 2 if _PassArg.from_obj(func) is not None else 1  # (context,) value, then the filter's own arguments

    @functools.wraps(func)  # keeps jinja_pass_arg, so context/environment filters still get their first argument
    def guarded(*args, **kwargs):
        _check_args(args[skip:], kwargs)
        value, rest = args[skip - 1], args[skip:]
        if name == "join" and isinstance(value, (list, tuple)):
            value, rest = (rest[0] if rest else kwargs.get("d", "")), (value,)
        _predict(name, value, rest)
        return _checked(func(*args, **kwargs))

    return guarded


@functools.lru_cache(maxsize=1)
def _environment_class():
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BudgetedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context, operator, left, right):
            budget = _current()
            budget.tick()
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                        budget.size(len(seq) * max(n, 0), "a repeated sequence")
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > MAX_POWER:
                raise TemplateBudgetError(f"an exponent of {right} exceeds the limit of {MAX_POWER}")
            if operator == "%" and isinstance(left, str):
                _check_args(right if isinstance(right, tuple) else (right,), {})
                _check_widths(left)
            return _checked(super().call_binop(context, operator, left, right))

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's own signature
            _check_args(args, kwargs)
            if isinstance(getattr(__obj, "__self__", None), str):  # a str method: 'x'.replace(...), ','.join(...)
                _predict(__obj.__name__, __obj.__self__, args)
            return _checked(super().call(__context, __obj, *args, **kwargs))

        def getattr(self, obj, attribute):
            _current().tick()
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):
            _current().tick()
            return super().getitem(obj, argument)

        def unsafe_undefined(self, obj, attribute):
            raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is refused")

        def wrap_str_format(self, value):
            fmt = super().wrap_str_format(value)
            if fmt is None:
                return None
            _check_widths(value.__self__)

            def checked(*args, **kwargs):
                _check_args(args, kwargs)
                return _checked(fmt(*args, **kwargs))

            return checked

    return BudgetedSandbox


def _check_widths(fmt: str) -> None:
    """A format string asking for a field wider than the output limit ('{:>999999999}', '%999999999s')."""
    budget = _current()
    for digits in re.findall(r"\d{7,}", fmt):
        budget.size(int(digits), "a format width")


def _budgeted_tree(env, source: str):
    """Parse ``source`` and route every loop iterable and ``~`` join through the budget."""
    from jinja2 import nodes
    from jinja2.visitor import NodeTransformer

    class Budgeted(NodeTransformer):
        def visit_For(self, node):
            node = self.generic_visit(node)
            node.iter = nodes.Call(nodes.Name(ITER, "load"), [node.iter], [], None, None).set_lineno(node.lineno)
            return node

        def visit_Concat(self, node):
            node = self.generic_visit(node)
            return nodes.Call(nodes.Name(CONCAT, "load"), node.nodes, [], None, None).set_lineno(node.lineno)

    tree = Budgeted().visit(env.parse(source))
    tree.set_environment(env)
    return tree


@functools.lru_cache(maxsize=16)
def compile_template(source: str):
    """The template, compiled once per source text, in the budgeted sandbox."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    if len(source) > MAX_TEMPLATE_CHARS:
        raise StropError(f"chat template: {len(source)} characters, over the {MAX_TEMPLATE_CHARS} limit")
    if ITER in source or CONCAT in source:
        raise StropError(f"chat template: uses the reserved names {ITER}/{CONCAT}")
    reference = _compile_jinja_template("").environment  # transformers' globals, filters and extensions
    env = _environment_class()(trim_blocks=True, lstrip_blocks=True,
                               extensions=[type(e) for e in reference.extensions.values()])
    env.globals.update({k: v for k, v in reference.globals.items() if k != "range"})  # keep the sandbox's range
    env.filters.update(reference.filters)
    env.filters = {name: _guard_filter(name, f) for name, f in env.filters.items()}
    env.globals.update({ITER: _Ticking, CONCAT: _concat})
    return env.from_string(_budgeted_tree(env, source))


KWARGS_ATTR = "strop_chat_template_kwargs"  # extra template variables a run trained with, on its tokenizer


def template_kwargs(enable_thinking: str) -> dict:
    """The extra variables a run passes to its chat template (``TrainConfig.enable_thinking``)."""
    return {} if enable_thinking == "auto" else {"enable_thinking": enable_thinking == "true"}


def set_template_kwargs(tok, kwargs: dict) -> None:
    """Every rendering with ``tok`` passes ``kwargs`` to the template, as ``apply_chat_template(**kwargs)`` does."""
    setattr(tok, KWARGS_ATTR, dict(kwargs))


def bake_template_kwargs(source: str, kwargs: dict) -> str:
    """The template with ``kwargs`` fixed inside it, for files whose readers cannot pass them (GGUF)."""
    import json

    # a top-level `set` shadows a variable of the same name the caller passes: the file keeps the run's setting
    return "".join(f"{{%- set {k} = {json.dumps(v)} -%}}" for k, v in kwargs.items()) + source


def render_chat(tok, messages: list[dict], add_generation_prompt: bool) -> str:
    """``tok.apply_chat_template(messages, tokenize=False, ...)``, within the limits above, with the
    run's template variables (``set_template_kwargs``)."""
    from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
    from transformers.utils import chat_template_utils as ctu

    template = compile_template_or_fail(tok.get_chat_template())
    # The same normalisation transformers applies: no None values, plain JSON types, reasoning aliases.
    messages = ctu._alias_reasoning_fields(ctu._plain_template_data(ctu._normalize_chat_messages(messages)))
    chars = sum(len(str(m.get("content", ""))) for m in messages)
    budget = _Budget(max(MIN_OUTPUT_CHARS, 8 * chars), TIME_LIMIT_S)
    token = _budget.set(budget)
    try:
        out, size = [], 0
        context = {**tok.special_tokens_map, **getattr(tok, KWARGS_ATTR, {}), "messages": messages, "tools": None,
                   "documents": None, "add_generation_prompt": add_generation_prompt}
        for chunk in template.generate(**context):
            size += len(chunk)
            budget.size(size, "the rendered text")
            budget.tick()
            out.append(chunk)
        return "".join(out)
    except TemplateBudgetError as exc:
        raise StropError(f"chat template: {exc}; refused") from None
    except SecurityError as exc:
        raise StropError(f"chat template: {exc} (sandbox)") from None
    except RecursionError:
        raise StropError("chat template: recursion too deep; refused") from None
    except MemoryError:
        raise StropError("chat template: ran out of memory while rendering; refused") from None
    except TemplateSyntaxError as exc:
        raise StropError(f"chat template: line {exc.lineno}: {exc.message}") from None
    except TemplateError as exc:
        raise StropError(f"chat template: {' '.join(str(exc).split())}") from None
    finally:
        _budget.reset(token)


def compile_template_or_fail(source: str):
    from jinja2.exceptions import TemplateSyntaxError

    try:
        return compile_template(source)
    except TemplateSyntaxError as exc:
        raise StropError(f"chat template: line {exc.lineno}: {exc.message}") from None


def with_system(messages, system_prompt: str) -> list[dict]:
    """Messages (records with ``role`` and ``content``) as template dicts, ``system_prompt`` first where none is."""
    dicts = [{"role": m.role, "content": m.content} for m in messages]
    if system_prompt and (not dicts or dicts[0]["role"] != "system"):
        dicts.insert(0, {"role": "system", "content": system_prompt})
    return dicts


def prompt_text(tok, messages, system_prompt: str = "") -> str:
    """What the model sees before it answers: template + generation prompt. ``messages`` are dicts
    or records with ``role`` and ``content`` (strop.data.records.Message)."""
    if messages and not isinstance(messages[0], dict):
        dicts = with_system(messages, system_prompt)
    else:
        dicts = list(messages)
        if system_prompt and (not dicts or dicts[0]["role"] != "system"):
            dicts.insert(0, {"role": "system", "content": system_prompt})
    return render_chat(tok, dicts, add_generation_prompt=True)
