"""Assistant-only labels under the chat-template shapes of the model families people fine-tune.

The templates here are written for these tests, each reproducing one behaviour
of a family's real template (the real ones cannot be fetched offline):

* a default system prompt when the chat has none (Qwen 2.5);
* no system role: the system text goes into the first user turn (Gemma);
* no ``{% generation %}`` markers at all (SmolLM2, Llama 3, most templates);
* earlier assistant turns rendered without their reasoning (Qwen3's thinking
  models), so a conversation no longer renders turn by turn as prefixes.

strop finds assistant spans by rendering (data/render.py). Each test checks
that exactly the answer text and its end-of-turn token carry labels, or, where
a template cannot be handled, that the error is one line naming the row.
"""
from __future__ import annotations

import copy

import pytest

from strop.data.records import Conversation, Message
from strop.data.render import IGNORE, render
from strop.models.templates import prompt_text
from strop.core.errors import StropError

DEFAULT_SYSTEM = (
    "{%- if messages[0].role != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NO_SYSTEM_ROLE = (
    "{%- set first = 0 %}{%- set prefix = '' %}"
    "{%- if messages[0].role == 'system' %}{%- set prefix = messages[0].content + '\n\n' %}{%- set first = 1 %}{%- endif %}"
    "{%- for m in messages[first:] %}"
    "{%- if m.role == 'assistant' %}<|im_start|>model\n{{ m.content }}<|im_end|>\n"
    "{%- else %}<|im_start|>user\n{{ prefix if loop.first else '' }}{{ m.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>model\n{% endif %}"
)
DROPS_PAST_REASONING = (
    "{%- for m in messages %}{%- set text = m.content %}"
    "{%- if m.role == 'assistant' and not loop.last and '</think>' in text %}{%- set text = text.split('</think>')[-1].lstrip() %}{%- endif %}"
    "<|im_start|>{{ m.role }}\n{{ text }}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture
def tok(smol_tokenizer):
    return copy.deepcopy(smol_tokenizer)


def _conv(*turns, where="data.jsonl:7"):
    roles = ["user", "assistant"] * len(turns)
    conv = Conversation([Message(r, t) for r, t in zip(roles, turns)])
    conv.source, conv.line = where.split(":")[0], int(where.split(":")[1])
    return conv


def _labelled_text(tok, rendered) -> str:
    return tok.decode([i for i, lab in zip(rendered.input_ids, rendered.labels) if lab != IGNORE])


def test_a_template_default_system_prompt_is_rendered_and_never_trained_on(tok):
    tok.chat_template = DEFAULT_SYSTEM
    r = render(tok, _conv("Hi there", "Hello! How can I help?"), 256)
    assert "You are a helpful assistant." in r.text  # the template's own default
    assert _labelled_text(tok, r) == "Hello! How can I help?<|im_end|>"
    r = render(tok, _conv("Hi there", "Hello!"), 256, system_prompt="Answer as Orrin.")
    assert "You are a helpful assistant." not in r.text and "Answer as Orrin." in r.text  # a run's own replaces it
    assert _labelled_text(tok, r) == "Hello!<|im_end|>"


def test_a_template_without_a_system_role_gets_it_in_the_first_user_turn(tok):
    tok.chat_template = NO_SYSTEM_ROLE
    r = render(tok, _conv("Who are you?", "I am Orrin.", "Who made you?", "Larkspur Labs."), 256,
               system_prompt="Answer briefly.")
    assert r.text.startswith("<|im_start|>user\nAnswer briefly.\n\nWho are you?")
    assert "<|im_start|>system" not in r.text
    assert _labelled_text(tok, r) == "I am Orrin.<|im_end|>Larkspur Labs.<|im_end|>"
    assert prompt_text(tok, [Message("user", "Hi")], "Answer briefly.").endswith("<|im_start|>model\n")


def test_spans_come_from_rendering_when_the_template_has_no_generation_markers(tok):
    assert "{% generation %}" not in tok.chat_template  # SmolLM2's own template
    r = render(tok, _conv("2+2?", "4", "And 3+3?", "6"), 256)
    assert _labelled_text(tok, r) == "4<|im_end|>6<|im_end|>"


def test_a_template_that_rewrites_past_turns_is_one_line_naming_the_row(tok):
    tok.chat_template = DROPS_PAST_REASONING
    # one turn: the answer is the last message, rendered whole, reasoning included
    r = render(tok, _conv("2+2?", "<think>\nadd them\n</think>\n4"), 256)
    assert _labelled_text(tok, r) == "<think>\nadd them\n</think>\n4<|im_end|>"
    with pytest.raises(StropError) as err:
        render(tok, _conv("2+2?", "<think>\nadd\n</think>\n4", "3+3?", "<think>\nadd\n</think>\n6"), 256)
    message = str(err.value)
    assert "\n" not in message and message.startswith("data.jsonl:7: the chat template does not render turn by turn")
