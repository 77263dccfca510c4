"""Format detection, validation errors with file:line, and the label mask."""
from __future__ import annotations

import json

import pytest

from conftest import DEMO_DATA, PEER
from strop.data import load, split
from strop.data.render import IGNORE, render
from strop.core.errors import StropError


@pytest.mark.parametrize("name, fmt, rows", [
    ("identity.json", "alpaca", 91),
    ("alpaca_en_demo.json", "alpaca", 999),
    ("glaive_toolcall_en_demo.json", "sharegpt", 300),
])
def test_peer_files_detected(name, fmt, rows):
    ds = load(PEER / name)
    assert ds.format == fmt
    assert len(ds) == rows


def test_json_array_reports_real_line_numbers():
    ds = load(PEER / "identity.json")
    text = (PEER / "identity.json").read_text().splitlines()
    third = ds.conversations[2]
    # The element starts on the reported line: its opening brace is there.
    assert text[third.line - 1].strip().startswith("{")
    assert third.messages[0].content in "\n".join(text[third.line - 1: third.line + 3])


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_sharegpt_roles(tmp_path):
    row = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "hi"},
                             {"from": "gpt", "value": "hello"}]}
    ds = load(_write(tmp_path, "s.jsonl", json.dumps(row) + "\n"))
    assert ds.format == "sharegpt"
    assert [m.role for m in ds.conversations[0].messages] == ["system", "user", "assistant"]


def test_alpaca_input_joined(tmp_path):
    row = {"instruction": "Translate", "input": "bonjour", "output": "hello"}
    conv = load(_write(tmp_path, "a.json", json.dumps([row]))).conversations[0]
    assert conv.messages[0].content == "Translate\n\nbonjour"
    assert conv.reference == "hello"


@pytest.mark.parametrize("text, expected", [
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{"messages": [\n',
     "bad.jsonl:2: invalid JSON"),
    ('{"foo": 1}\n', "bad.jsonl:1: unknown data format"),
    ('{"messages": []}\n', "bad.jsonl:1: empty conversation"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', "bad.jsonl:1: conversation has no assistant message"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}\n', "bad.jsonl:1: messages[1].role 'robot'"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}\n', "bad.jsonl:1: message 1: empty assistant content"),
    ('[1, 2]\n', "bad.jsonl:1: each row must be a JSON object"),
    ('\n\n', "bad.jsonl: no rows found"),
])
def test_bad_rows_name_file_and_line(tmp_path, text, expected):
    path = _write(tmp_path, "bad.jsonl", text)
    with pytest.raises(StropError) as err:
        load(path)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(StropError, match="file not found"):
        load(tmp_path / "nope.jsonl")
    with pytest.raises(StropError, match="unknown file type .txt"):
        load(_write(tmp_path, "x.txt", "hello"))


def test_json_array_error_line(tmp_path):
    text = '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c", "output": }\n]'
    with pytest.raises(StropError, match=r"bad.json:3: invalid JSON"):
        load(_write(tmp_path, "bad.json", text))


def test_csv_rows(tmp_path):
    path = _write(tmp_path, "d.csv", 'instruction,output\n"multi\nline",answer\nsecond,two\n')
    ds = load(path)
    assert ds.format == "alpaca" and len(ds) == 2
    assert ds.conversations[1].line == 4  # the quoted newline pushes the second row down


def test_split_is_seeded_and_disjoint():
    convs = load(DEMO_DATA / "persona_train.jsonl").conversations
    a_train, a_val = split(convs, 0.1, seed=7)
    b_train, b_val = split(convs, 0.1, seed=7)
    assert [c.line for c in a_val] == [c.line for c in b_val]
    assert len(a_val) == 11 and len(a_train) + len(a_val) == len(convs)
    assert not {c.line for c in a_val} & {c.line for c in a_train}


def test_prompt_tokens_are_masked(smol_tokenizer, tmp_path):
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
                        {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"},
                        {"role": "assistant", "content": "Green."}]}
    conv = load(_write(tmp_path, "m.jsonl", json.dumps(row))).conversations[0]
    r = render(smol_tokenizer, conv, 512)
    trained = smol_tokenizer.decode([t for t, l in zip(r.input_ids, r.labels) if l != IGNORE])
    assert trained == "Blue.<|im_end|>Green.<|im_end|>"
    # every prompt token (system, user, role headers) carries -100
    prompt_ids = smol_tokenizer(smol_tokenizer.apply_chat_template(conv.as_dicts()[:2], tokenize=False,
                                add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    assert all(l == IGNORE for l in r.labels[: len(prompt_ids)])
    assert r.input_ids[: len(prompt_ids)] == prompt_ids


def test_zero_weight_message_not_trained(smol_tokenizer, tmp_path):
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "skip me", "weight": 0},
                        {"role": "user", "content": "b"}, {"role": "assistant", "content": "learn me"}]}
    conv = load(_write(tmp_path, "w.jsonl", json.dumps(row))).conversations[0]
    r = render(smol_tokenizer, conv, 512)
    assert smol_tokenizer.decode([t for t, l in zip(r.input_ids, r.labels) if l != IGNORE]) == "learn me<|im_end|>"


def test_train_on_inputs_labels_everything(smol_tokenizer):
    conv = load(DEMO_DATA / "persona_train.jsonl").conversations[0]
    r = render(smol_tokenizer, conv, 512, train_on_inputs=True)
    assert r.labels == r.input_ids
