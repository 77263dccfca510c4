"""Assistant-only labels under the chat-template shapes of the model families people fine-tune.

The templates here are written for these tests, each reproducing one behaviour
of a family's real template (the real ones cannot be fetched offline):

* a default system prompt when the chat has none (Qwen 2.5);
* no system role: the system text goes into the first user turn (Gemma);
* no ``{% generation %}`` markers at all (SmolLM2, Llama 3, most templates);
* earlier assistant turns rendered without their reasoning (Qwen3's thinking
  models), so a conversation no longer renders turn by turn as prefixes;
* a thinking switch (Qwen3's ``enable_thinking``): off, every answer and the
  generation prompt carry an empty think block.

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
THINKING_SWITCH = (
    "{%- set off = enable_thinking is defined and enable_thinking is false %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and off %}<think>\n\n</think>\n\n{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% if off %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
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


def test_the_thinking_switch_reaches_the_template_in_masks_and_prompts(tok):
    from strop.models.templates import bake_template_kwargs, set_template_kwargs, template_kwargs

    tok.chat_template = THINKING_SWITCH
    assert template_kwargs("auto") == {} and template_kwargs("false") == {"enable_thinking": False}
    assert "<think>" not in prompt_text(tok, [Message("user", "Hi")])  # the template's own default
    set_template_kwargs(tok, template_kwargs("false"))
    assert prompt_text(tok, [Message("user", "Hi")]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    r = render(tok, _conv("2+2?", "4"), 256)
    assert "<think>\n\n</think>\n\n4" in r.text
    assert _labelled_text(tok, r) == "4<|im_end|>"  # the empty block belongs to the prompt side, as when generating
    baked = copy.deepcopy(tok)
    baked.chat_template = bake_template_kwargs(THINKING_SWITCH, template_kwargs("false"))
    set_template_kwargs(baked, {"enable_thinking": True})  # a reader passing the opposite cannot undo it
    assert prompt_text(baked, [Message("user", "Hi")]) == prompt_text(tok, [Message("user", "Hi")])


@pytest.mark.slow
def test_a_run_keeps_its_thinking_setting_in_generation_and_export(tiny_model_dir, chat_file, tmp_path, smol_tokenizer):
    import json
    import shutil

    from strop import models
    from strop.export import export
    from strop.methods.options import load_train_config
    from strop.train.run import train

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    switch = copy.deepcopy(smol_tokenizer)
    switch.chat_template = THINKING_SWITCH
    switch.save_pretrained(base)
    cfg = load_train_config(None, {"base_model": str(base), "data": str(chat_file), "output_dir": str(tmp_path / "run"),
                                   "max_steps": "2", "val_size": "0", "report_to": "none", "enable_thinking": "false"})
    run = train(cfg, progress=False)
    assert json.loads((run.final / "strop_run.json").read_text())["chat_template_kwargs"] == {"enable_thinking": False}
    prompt = prompt_text(models.load_tokenizer(str(run.root)), [Message("user", "Hi")])
    assert prompt.endswith("<think>\n\n</think>\n\n")
    report = export(str(run.root), "merged", output=str(tmp_path / "merged"), n_prompts=2)
    exported = models.load_tokenizer(report["output"])
    assert exported.chat_template.startswith("{%- set enable_thinking = false -%}")
    plain = copy.deepcopy(exported)
    plain.__dict__.pop("strop_chat_template_kwargs", None)  # a reader that knows nothing of strop_run.json
    assert prompt_text(plain, [Message("user", "Hi")]) == prompt

