"""Chat templates are untrusted code: sandboxed, with size and time limits, and the same output as transformers."""
from __future__ import annotations

import copy
import time

import pytest

from strop.models import templates as sandbox
from strop.data.records import Conversation, Message
from strop.data.render import render
from strop.models.templates import render_chat
from strop.core.errors import StropError

CHATS = [
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}],
    [{"role": "user", "content": "x" * 20_000}],
]


def _with_template(tok, template: str):
    tok = copy.copy(tok)
    tok.chat_template = template
    return tok


@pytest.mark.parametrize("chat", CHATS)
@pytest.mark.parametrize("gen", [False, True])
def test_same_text_as_transformers(smol_tokenizer, chat, gen):
    expected = smol_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
    assert render_chat(smol_tokenizer, chat, gen) == expected


BAD = {
    "nested loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                     "longer than"),
    "loop over a long string": ("{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
                                "longer than"),
    "huge repeat": ("{{ 'x' * 1000000000 }}", "over the limit"),
    "doubling": ("{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                 "over the limit"),
    "huge output": ("{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}", "the rendered text"),
    "padding": ("{{ 'x'.ljust(1000000000) }}", "size argument"),
    "format width": ("{{ '{:>999999999}'.format('x') }}", "format width"),
    "replace blow-up": ("{% set s = 'x' * 900000 %}{{ s|replace('x', s) }}", "replaced string"),
    "power": ("{{ 10 ** 100000000 }}", "exponent"),
    "recursion": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion"),
    "dunder": ("{{ messages.__class__ }}", "'__class__'.*refused"),
    "mro walk": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "'__class__'.*refused"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_malicious_template_is_refused_with_one_line(smol_tokenizer, monkeypatch, name):
    monkeypatch.setattr(sandbox, "TIME_LIMIT_S", 0.3)
    template, reason = BAD[name]
    t0 = time.monotonic()
    with pytest.raises(StropError, match=f"chat template: .*{reason}") as err:
        render_chat(_with_template(smol_tokenizer, template), CHATS[0], False)
    assert "\n" not in str(err.value)
    assert time.monotonic() - t0 < 5


def test_oversized_template_and_template_errors(smol_tokenizer):
    with pytest.raises(StropError, match="over the 65536 limit"):
        render_chat(_with_template(smol_tokenizer, "x" * 70_000), CHATS[0], False)
    with pytest.raises(StropError, match="chat template: roles must alternate"):
        render_chat(_with_template(smol_tokenizer, "{{ raise_exception('roles must alternate') }}"), CHATS[0], False)
    with pytest.raises(StropError, match="chat template: line 1"):
        render_chat(_with_template(smol_tokenizer, "{% for %}"), CHATS[0], False)


def test_training_rendering_goes_through_the_sandbox(smol_tokenizer):
    conv = Conversation([Message("user", "hi"), Message("assistant", "hello")], source="t.jsonl", line=1)
    assert render(smol_tokenizer, conv, 64).n_trainable > 0
    with pytest.raises(StropError, match="'__class__'.*refused"):
        render(_with_template(smol_tokenizer, "{{ messages.__class__ }}"), conv, 64)
