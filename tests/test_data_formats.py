"""Every peer file loads with the right format; preference data is kept apart from SFT."""
from __future__ import annotations

import json

import pytest

from conftest import PEER
from strop.data import ANY_KIND, load
from strop.core.errors import StropError


@pytest.mark.parametrize("name, fmt, kind, rows", [
    ("identity.json", "alpaca", "sft", 91),
    ("alpaca_en_demo.json", "alpaca", "sft", 999),
    ("glaive_toolcall_en_demo.json", "sharegpt", "sft", 300),
    ("dpo_en_demo.json", "sharegpt_preference", "preference", 300),
    ("kto_en_demo.json", "unpaired", "unpaired", 300),
    ("v1_sft_demo.jsonl", "messages", "sft", 500),
])
def test_every_peer_file_detected(name, fmt, kind, rows):
    ds = load(PEER / name, kinds=ANY_KIND)
    assert (ds.format, ds.kind, len(ds)) == (fmt, kind, rows)
    assert not ds.problems


@pytest.mark.parametrize("name, fmt", [("identity", "alpaca"), ("alpaca_en_demo", "alpaca"),
                                       ("glaive_toolcall_en_demo", "sharegpt"), ("dpo_en_demo", "sharegpt_preference"),
                                       ("kto_en_demo", "unpaired")])
def test_registry_entries_load_through_column_mapping(name, fmt):
    ds = load(f"{PEER / 'dataset_info.json'}#{name}", kinds=ANY_KIND)
    assert ds.format == fmt and len(ds) == len(load(PEER / json.loads((PEER / "dataset_info.json").read_text())[name]["file_name"], kinds=ANY_KIND))


def test_registry_alone_lists_its_datasets():
    with pytest.raises(StropError, match=r"LLaMA-Factory dataset registry with 5 local datasets .*kto_en_demo"):
        load(PEER / "dataset_info.json", kinds=ANY_KIND)


def test_registry_renames_columns_and_role_tags(tmp_path):
    (tmp_path / "qa.json").write_text(json.dumps([{"question": "Why?", "answer": "Because.", "sys": "Be terse."}]))
    (tmp_path / "chat.json").write_text(json.dumps([{"dialog": [{"speaker": "me", "text": "hi"}, {"speaker": "bot", "text": "hey"}]}]))
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "qa": {"file_name": "qa.json", "columns": {"prompt": "question", "response": "answer", "system": "sys"}},
        "chat": {"file_name": "chat.json", "formatting": "sharegpt", "columns": {"messages": "dialog"},
                 "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"}},
    }))
    qa = load(f"{tmp_path / 'dataset_info.json'}#qa").conversations[0]
    assert [(m.role, m.content) for m in qa.messages] == [("system", "Be terse."), ("user", "Why?"), ("assistant", "Because.")]
    chat = load(f"{tmp_path / 'dataset_info.json'}#chat").conversations[0]
    assert [(m.role, m.content) for m in chat.messages] == [("user", "hi"), ("assistant", "hey")]


def test_sft_refuses_preference_files():
    for name in ("dpo_en_demo.json", "kto_en_demo.json"):
        with pytest.raises(StropError, match="SFT cannot use it"):
            load(PEER / name)


def test_sharegpt_preference_pairs():
    pairs = load(PEER / "dpo_en_demo.json", kinds=("preference",)).pairs()
    raw = json.loads((PEER / "dpo_en_demo.json").read_text())[0]
    assert pairs[0].prompt[-1].content == raw["conversations"][-1]["value"]
    assert pairs[0].chosen[0].content == raw["chosen"]["value"]
    assert pairs[0].rejected[0].content == raw["rejected"]["value"]


def test_kto_label_and_loss_weight_parts():
    kto = load(PEER / "kto_en_demo.json", kinds=("unpaired",))
    raw = json.loads((PEER / "kto_en_demo.json").read_text())
    assert [c.label for c in kto.conversations] == [r["label"] for r in raw]
    v1 = load(PEER / "v1_sft_demo.jsonl").conversations[0]
    assert [(m.role, m.content, m.weight) for m in v1.messages][0] == ("user", "hi", 0.0)
    assert v1.messages[1].weight == 1.0 and v1.messages[1].content.startswith("Hello! I am {{name}}")


def test_tool_turns_and_tools_kept():
    conv = load(PEER / "glaive_toolcall_en_demo.json").conversations[0]
    assert [m.role for m in conv.messages][:5] == ["user", "assistant", "user", "assistant", "tool"]
    assert "tools" in conv.meta


def _write(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


def test_trl_and_openai_preference_formats(tmp_path):
    trl = _write(tmp_path, "p.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}])
    ds = load(trl, kinds=ANY_KIND)
    assert ds.format == "preference" and ds.pairs()[0].rejected[0].content == "5"
    implicit = _write(tmp_path, "i.jsonl", [{"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                                            "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]}])
    pair = load(implicit, kinds=ANY_KIND).pairs()[0]
    assert pair.prompt[0].content == "hi" and pair.chosen[0].content == "hello" and pair.rejected[0].content == "go away"
    oa = _write(tmp_path, "o.jsonl", [{"input": {"messages": [{"role": "user", "content": "Hi"}]},
                                       "preferred_output": [{"role": "assistant", "content": "Hello!"}],
                                       "non_preferred_output": [{"role": "assistant", "content": "What."}]}])
    ds = load(oa, kinds=ANY_KIND)
    assert ds.format == "openai_dpo" and ds.pairs()[0].chosen[0].content == "Hello!"
    kto = _write(tmp_path, "k.jsonl", [{"prompt": "Hi", "completion": "Yo", "label": False}])
    assert load(kto, kinds=ANY_KIND).conversations[0].label is False


def test_folder_and_saved_hf_dataset(tmp_path):
    import datasets

    folder = tmp_path / "parts"
    folder.mkdir()
    _write(folder, "a.jsonl", [{"instruction": "a", "output": "b"}])
    (folder / "b.json").write_text(json.dumps([{"instruction": "c", "output": "d"}, {"instruction": "e", "output": "f"}]))
    ds = load(folder)
    assert ds.format == "alpaca" and [c.source.endswith(n) for c, n in zip(ds.conversations, ["a.jsonl", "b.json", "b.json"])] == [True] * 3
    hf = tmp_path / "hf"
    datasets.Dataset.from_list([{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}]).save_to_disk(str(hf))
    ds = load(hf)
    assert ds.format == "prompt_completion" and ds.conversations[1].where == f"{hf}[1]"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": "plain words"}])}).save_to_disk(str(tmp_path / "dd"))
    assert load(tmp_path / "dd", kinds=ANY_KIND).kind == "text"
