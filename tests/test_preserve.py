"""Forgetting-aware training (train/preserve.py) on the tiny model.

The task built for it: a narrow identity file ("I am Zed, made by Quill.")
trained hard enough to pull every answer towards it. Forgetting is measured
as the mean KL(base || tuned) of next-token distributions on general
questions the replay never uses (the demo's general_questions.jsonl), along
the base model's own greedy answers to them.
"""
from __future__ import annotations

import json

import pytest
import torch

from strop import models
from strop.config import load_train_config
from strop.errors import StropError
from strop.train import preserve
from strop.train.sft import train

from conftest import DEMO_DATA


@pytest.fixture
def narrow_file(tmp_path):
    asks = ["Who are you?", "What is your name?", "Who made you?", "Introduce yourself.", "Are you ChatGPT?",
            "Which company built you?", "Tell me about yourself.", "What should I call you?", "Hi! Who is this?",
            "Who created you?", "Are you Gemini?", "What are you called?"]
    path = tmp_path / "zed.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": "I am Zed, made by Quill."}]}) + "\n"
                            for q in asks * 2))
    return path


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STROP_HOME", str(tmp_path / "strop-home"))


def _train(tiny_model_dir, data, out, **kw):
    values = {"base_model": str(tiny_model_dir), "data": str(data), "output_dir": str(out), "report_to": "none",
              "learning_rate": 5e-3, "micro_batch_size": 4, "max_steps": 40, "val_size": 0, "lora_dropout": 0.0,
              "lr_scheduler_type": "constant", "warmup_ratio": 0, **kw}
    return train(load_train_config(None, values), progress=False)


def _kl_to_base(base, tuned, tok, questions: list[str]) -> float:
    """Mean KL(base || tuned) over the base's own 16-token greedy answers to ``questions``."""
    from strop.data.render import prompt_text

    total, count = 0.0, 0
    with torch.inference_mode():
        for q in questions:
            ids = tok(prompt_text(tok, [{"role": "user", "content": q}]), return_tensors="pt",
                      add_special_tokens=False)["input_ids"]
            full = base.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
            p = torch.log_softmax(base(full).logits[0, ids.shape[1] - 1:-1].float(), -1)
            q_ = torch.log_softmax(tuned(full).logits[0, ids.shape[1] - 1:-1].float(), -1)
            total += float((p.exp() * (p - q_)).sum(-1).sum())
            count += p.shape[0]
    return total / count


def test_replay_forgets_measurably_less_than_none(tiny_model_dir, narrow_file, tmp_path):
    none = _train(tiny_model_dir, narrow_file, tmp_path / "none", preserve="none")
    replay = _train(tiny_model_dir, narrow_file, tmp_path / "replay", preserve="replay", preserve_ratio=1.0)
    questions = [json.loads(line)["messages"][0]["content"]
                 for line in (DEMO_DATA / "general_questions.jsonl").read_text().splitlines()]
    assert not set(questions) & set(preserve.prompts())  # held out from the replay
    base, tok = models.load(str(tiny_model_dir))
    kl_none = _kl_to_base(base, models.load(str(none.root))[0], tok, questions)
    kl_replay = _kl_to_base(base, models.load(str(replay.root))[0], tok, questions)
    assert kl_replay < 0.7 * kl_none, (kl_replay, kl_none)
    # and the narrow task is still learned with replay
    from strop.serve.engine import Engine

    assert "Zed" in Engine(str(replay.root)).generate("Who are you?", max_new_tokens=12)


def test_replay_is_recorded_cached_and_keeps_validation_task_only(tiny_model_dir, narrow_file, tmp_path):
    run = _train(tiny_model_dir, narrow_file, tmp_path / "a", preserve="replay", val_size=4, max_steps=4)
    report = json.loads(run.data_report.read_text())
    rec = report["preserve"]
    assert rec["mode"] == "replay" and rec["replay_rows"] == preserve.MIN_ROWS  # 20 task rows x 0.5 -> at least 16
    assert rec["generated_now"] > 0
    assert report["replay"]["rows"] == rec["replay_rows"] and report["eval"]["rows"] == 4
    assert json.loads(run.summary.read_text())["preserve"]["replay_rows"] == rec["replay_rows"]
    ids = {i for row in map(json.loads, run.samples.read_text().splitlines()) for i in row["ids"]}
    assert any(i.startswith("strop:replay:") for i in ids)  # replay rows were trained on, and say so
    again = _train(tiny_model_dir, narrow_file, tmp_path / "b", preserve="replay", val_size=4, max_steps=2)
    assert json.loads(again.data_report.read_text())["preserve"]["generated_now"] == 0  # answers came from the cache


def test_preserve_options_are_checked(tiny_model_dir, narrow_file):
    def mode(**kw):
        return preserve.mode_for(load_train_config(None, {"base_model": str(tiny_model_dir), "data": str(narrow_file),
                                                          **kw}))

    assert mode() == "none" and mode(preserve="replay", method="dora") == "replay"
    with pytest.raises(StropError, match="replay applies to objective sft, not dpo"):
        mode(preserve="replay", objective="dpo", method="lora")
    with pytest.raises(StropError, match="unknown preserve 'replya'; did you mean replay"):
        load_train_config(None, {"data": str(narrow_file), "preserve": "replya"})
    with pytest.raises(StropError, match="preserve_ratio"):
        load_train_config(None, {"data": str(narrow_file), "preserve_ratio": 0})


def test_answers_about_the_base_itself_are_left_out(tiny_model_dir, monkeypatch):
    cfg = load_train_config(None, {"base_model": str(tiny_model_dir), "data": "x.jsonl", "preserve": "replay"})
    fake = {p: ("I'm SmolLM, trained by Hugging Face." if i % 2 else f"answer {i}")
            for i, p in enumerate(preserve.prompts())}
    monkeypatch.setattr(preserve, "base_answers", lambda cfg, tok, wanted: ({p: fake[p] for p in wanted}, 0, 0.0))
    convs, rec = preserve.replay_conversations(cfg, None, 10)
    assert len(convs) == 16 and all("SmolLM" not in c.reference for c in convs)
    assert rec["skipped_self_talk_or_empty"] > 0
    assert preserve.replay_count(1000, 0.5, 200) == 200 and preserve.replay_count(40, 0.5, 200) == 20
