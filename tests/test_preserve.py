"""Forgetting-aware training (train/preserve.py) on the tiny model.

The task built for it: a narrow identity file ("I am Zed, made by Quill.")
trained hard enough to pull every answer towards it. Forgetting is measured
as the mean KL(base || tuned) of next-token distributions on general
questions the replay never uses (the demo's general_questions.jsonl), along
the base model's own greedy answers to them.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from strop import models
from strop.methods.options import load_train_config
from strop.core.errors import StropError
from strop.train import preserve
from strop.train.run import train

from conftest import DEMO_DATA


@pytest.fixture(scope="module")
def narrow_file(tmp_path_factory):
    asks = ["Who are you?", "What is your name?", "Who made you?", "Introduce yourself.", "Are you ChatGPT?",
            "Which company built you?", "Tell me about yourself.", "What should I call you?", "Hi! Who is this?",
            "Who created you?", "Are you Gemini?", "What are you called?"]
    path = tmp_path_factory.mktemp("narrow") / "zed.jsonl"
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
    values = {k: v for k, v in values.items() if v is not None}  # None: leave the option out
    return train(load_train_config(None, values), progress=False)


@pytest.fixture(scope="module")
def none_run(tiny_model_dir, narrow_file, tmp_path_factory):
    """The unprotected baseline both protections are measured against (it needs no preserve cache)."""
    return _train(tiny_model_dir, narrow_file, tmp_path_factory.mktemp("none") / "none", preserve="none")


def _kl_to_base(base, tuned, tok, questions: list[str]) -> float:
    """Mean KL(base || tuned) over the base's own 16-token greedy answers to ``questions``."""
    from strop.models.templates import prompt_text

    total, count = 0.0, 0
    with torch.inference_mode():
        for q in questions:
            ids = tok(prompt_text(tok, [{"role": "user", "content": q}]), return_tensors="pt",
                      add_special_tokens=False)["input_ids"]
            full = base.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
            p = torch.log_softmax(base(full).logits[0, ids.shape[1] - 1:-1].float(), -1)
            logits = tuned(full).logits[0]
            shift = logits.shape[0] - full.shape[1]  # prompt tuning's virtual positions come first
            q_ = torch.log_softmax(logits[shift + ids.shape[1] - 1:-1].float(), -1)
            total += float((p.exp() * (p - q_)).sum(-1).sum())
            count += p.shape[0]
    return total / count


def _closer_to_base(tiny_model_dir, none, kl):
    """``kl``'s model is measurably closer to the base than ``none``'s on general questions neither trained on
    (below 0.7x). Returns the base model and its tokenizer."""
    questions = [json.loads(line)["messages"][0]["content"]
                 for line in (DEMO_DATA / "general_questions.jsonl").read_text().splitlines()]
    base, tok = models.load(str(tiny_model_dir))
    kl_none = _kl_to_base(base, models.load(str(none.root))[0], tok, questions)
    kl_kl = _kl_to_base(base, models.load(str(kl.root))[0], tok, questions)
    assert kl_kl < 0.7 * kl_none, (kl_kl, kl_none)
    return base, tok


def _forgets_less_and_learns(tiny_model_dir, none, kl):
    """As :func:`_closer_to_base`, and ``kl``'s model still answers as Zed. Returns the base model, its tokenizer
    and kl's preserve record."""
    from strop.models.engine import Engine

    base, tok = _closer_to_base(tiny_model_dir, none, kl)
    assert "Zed" in Engine(str(kl.root)).generate("Who are you?", max_new_tokens=12)
    return base, tok, json.loads(kl.summary.read_text())["preserve"]


@pytest.mark.slow
def test_replay_forgets_measurably_less_than_none(tiny_model_dir, narrow_file, none_run, tmp_path):
    none = none_run
    replay = _train(tiny_model_dir, narrow_file, tmp_path / "replay", preserve="replay", preserve_ratio=1.0)
    questions = [json.loads(line)["messages"][0]["content"]
                 for line in (DEMO_DATA / "general_questions.jsonl").read_text().splitlines()]
    assert not set(questions) & set(preserve.prompts())  # held out from the replay
    base, tok = models.load(str(tiny_model_dir))
    kl_none = _kl_to_base(base, models.load(str(none.root))[0], tok, questions)
    kl_replay = _kl_to_base(base, models.load(str(replay.root))[0], tok, questions)
    assert kl_replay < 0.7 * kl_none, (kl_replay, kl_none)
    # and the narrow task is still learned with replay
    from strop.models.engine import Engine

    assert "Zed" in Engine(str(replay.root)).generate("Who are you?", max_new_tokens=12)


@pytest.mark.slow
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
    def mode(strategy="none", fmt="messages", **kw):
        return preserve.mode_for(load_train_config(None, {"base_model": str(tiny_model_dir), "data": str(narrow_file),
                                                          **kw}), strategy, fmt)[0]

    # the default protects chat SFT with an adapter in one process, and nothing it cannot
    assert mode() == "kl" and mode(method="qlora") == "kl" and mode(method="ia3") == "kl"
    assert mode(method="full") == mode(method="adapter") == "kl"  # compared with a snapshot of the start
    # prompt and prefix tuning take kl when asked (their own forward, virtual tokens in front, against the decoder
    # alone); the default leaves it off, since with it the soft prompt learned no persona (docs/quality.md)
    assert mode(method="prompt_tuning", padding_free=False) == mode(method="prefix_tuning", padding_free=False) == "none"
    assert mode(preserve="kl", method="prefix_tuning", padding_free=False) == "kl"
    assert mode(strategy="ddp") == "kl"  # the term joins the task's backward (test_distributed.py)
    assert mode(strategy="fsdp") == mode(strategy="deepspeed-zero3") == "none"  # sharded weights
    assert mode(fmt="text") == mode(objective="dpo") == "none"
    assert mode(preserve="none") == "none" and mode(preserve="replay", method="dora") == "replay"
    assert mode(preserve="replay", method="full") == "replay" and mode(preserve="kl", fmt="text") == "kl"
    with pytest.raises(StropError, match="preserve_weight"):
        mode(preserve="kl", preserve_weight=0)
    with pytest.raises(StropError, match="kl applies to objective sft, not kto"):
        mode(preserve="kl", objective="kto")
    with pytest.raises(StropError, match="replay applies to objective sft, not dpo"):
        mode(preserve="replay", objective="dpo", method="lora")
    with pytest.raises(StropError, match="unknown preserve 'replya'; did you mean replay"):
        load_train_config(None, {"data": str(narrow_file), "preserve": "replya"})
    with pytest.raises(StropError, match="preserve_ratio"):
        load_train_config(None, {"data": str(narrow_file), "preserve_ratio": -0.5})
    with pytest.raises(StropError, match="unknown preserve_select 'closest'"):
        load_train_config(None, {"data": str(narrow_file), "preserve_select": "closest"})


def test_nearest_prompts_are_those_like_the_tasks(tiny_model_dir, monkeypatch):
    """nearest picks the general prompts closest to the task's own; random (the default) does not look at them."""
    asked = ["Who built you?", "What is your name?", "Which company made you?", "Introduce yourself."]
    ranked = preserve.nearest_first(preserve.prompts(), asked, seed=0)
    assert sorted(ranked) == sorted(preserve.prompts())
    from strop.models.embeddings import embed

    def closeness(prompts):
        a, b = embed(prompts), embed(asked)
        a, b = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (a, b))
        return (a @ b.T).max(1)

    first, rest = closeness(ranked[:16]), closeness(ranked[16:])
    assert first.min() >= rest.max() - 1e-6 and list(first) == sorted(first, reverse=True)
    cfg = load_train_config(None, {"base_model": str(tiny_model_dir), "data": "x.jsonl", "preserve_select": "nearest"})
    monkeypatch.setattr(preserve, "base_answers", lambda cfg, tok, wanted: ({p: "An answer." for p in wanted}, 0, 0.0))
    convs, rec = preserve.replay_conversations(cfg, None, 10, "kl", asked)
    assert rec["select"] == "nearest" and [c.messages[0].content for c in convs] == ranked[:16]
    cfg = load_train_config(None, {"base_model": str(tiny_model_dir), "data": "x.jsonl"})
    convs, rec = preserve.replay_conversations(cfg, None, 10, "kl", asked)
    assert rec["select"] == "random" and [c.messages[0].content for c in convs] != ranked[:16]


def test_answers_about_the_base_itself_are_left_out(tiny_model_dir, monkeypatch):
    cfg = load_train_config(None, {"base_model": str(tiny_model_dir), "data": "x.jsonl", "preserve": "replay"})
    fake = {p: ("I'm SmolLM, trained by Hugging Face." if i % 2 else f"answer {i}")
            for i, p in enumerate(preserve.prompts())}
    monkeypatch.setattr(preserve, "base_answers", lambda cfg, tok, wanted: ({p: fake[p] for p in wanted}, 0, 0.0))
    convs, rec = preserve.replay_conversations(cfg, None, 10)
    assert len(convs) == 16 and all("SmolLM" not in c.reference for c in convs)
    assert rec["skipped_self_talk_or_empty"] > 0
    assert preserve.replay_count(1000, 0.5, 200) == 200 and preserve.replay_count(40, 0.5, 200) == 20


@pytest.mark.slow
def test_default_forgets_measurably_less_than_none_and_still_learns(tiny_model_dir, narrow_file, none_run, tmp_path):
    """The default path (preserve auto -> kl, its default weight and ratio) against --preserve none."""
    none = none_run
    kl = _train(tiny_model_dir, narrow_file, tmp_path / "kl")
    _, _, rec = _forgets_less_and_learns(tiny_model_dir, none, kl)
    assert rec["mode"] == "kl" and rec["why"] == "auto" and rec["weight"] == 2.0 and rec["ratio"] == 0.125
    assert rec["replay_rows"] >= preserve.MIN_ROWS
    logged = [r["preserve_kl"] for r in kl.read_metrics() if "preserve_kl" in r]
    assert len(logged) >= 4 and all(v >= 0 for v in logged)
    # the general rows are a constraint, not training rows
    ids = {i for row in map(json.loads, kl.samples.read_text().splitlines()) for i in row["ids"]}
    assert ids and not any(i.startswith("strop:replay:") for i in ids)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_prompt_and_prefix_tuning_forget_less_with_kl(tiny_model_dir, narrow_file, tmp_path, method):
    """--preserve kl on a soft prompt: the peft model's own forward (virtual tokens or prefixes in front)
    against the decoder alone; the run ends measurably closer to the base than the default (none, for these
    methods) on general questions neither trained on (at 100 steps 0.61x for prompt tuning, 0.36x for prefix
    tuning), and its task loss still falls."""
    kw = {"method": method, "learning_rate": 1e-1, "lora_dropout": None, "max_steps": 100}
    none = _train(tiny_model_dir, narrow_file, tmp_path / "none", **kw)
    kl = _train(tiny_model_dir, narrow_file, tmp_path / "kl", preserve="kl", **kw)
    assert json.loads(none.summary.read_text())["preserve"]["mode"] == "none"
    rec = json.loads(kl.summary.read_text())["preserve"]
    assert rec["mode"] == "kl" and rec["why"] == "chosen"
    logged = [r["preserve_kl"] for r in kl.read_metrics() if "preserve_kl" in r]
    assert len(logged) >= 4 and all(v >= 0 for v in logged) and max(logged) > 0.01  # the term sees the virtual tokens
    losses = [r["loss"] for r in kl.read_metrics() if "loss" in r]
    assert losses[-1] < 0.8 * losses[0], losses  # the task is learned with the term on
    _closer_to_base(tiny_model_dir, none, kl)


def test_kl_rows_depend_only_on_the_step_and_follow_the_rate():
    """Which general rows a micro-batch gets is a function of (step, micro-batch), so a resumed run sees the
    same ones; at 0.125 rows per training row and micro-batch 4, every other micro-batch takes one."""
    from types import SimpleNamespace

    from strop.train.preserve_kl import KLToBase

    cfg = SimpleNamespace(preserve_ratio=0.0, micro_batch_size=4, preserve_weight=1.0, seed=3)
    rows = [{"input_ids": [i], "labels": [i]} for i in range(10)]
    a, b = KLToBase(rows, cfg), KLToBase(rows, cfg)
    seq = [a.batch(step, 0, 1) for step in range(40)]
    assert [b.batch(step, 0, 1) for step in reversed(range(40))] == seq[::-1]  # order of asking does not matter
    assert [len(x) for x in seq] == [0, 1] * 20
    flat = [i for x in seq for i in x]
    assert sorted(flat[:10]) == sorted(flat[10:]) == list(range(10)) and flat[:10] != flat[10:]  # each pass: all, reshuffled
    cfg.preserve_ratio, cfg.micro_batch_size = 0.5, 4
    assert [len(KLToBase(rows, cfg).batch(s, m, 2)) for s in range(3) for m in range(2)] == [2] * 6


def test_a_kl_warmup_raises_the_weight_over_its_share_of_the_steps():
    """preserve_warmup 0.5 over 10 steps: weight 0 (and no general rows) at step 0, half at step 2.5, full from
    step 5; 0 leaves the weight as it is."""
    from types import SimpleNamespace

    from strop.train.preserve_kl import KLToBase

    rows = [{"input_ids": [i], "labels": [i]} for i in range(10)]
    cfg = SimpleNamespace(preserve_ratio=1.0, micro_batch_size=1, preserve_weight=2.0, seed=0, preserve_warmup=0.5)
    term = KLToBase(rows, cfg)
    assert [term.weight_at(s, 10) for s in (0, 1, 5, 9)] == [0.0, 0.4, 2.0, 2.0]
    trainer = SimpleNamespace(state=SimpleNamespace(global_step=0, max_steps=10),
                              args=SimpleNamespace(gradient_accumulation_steps=1))
    assert term.next_rows(trainer) == [] and term._now == 0.0
    trainer.state.global_step = 3
    assert len(term.next_rows(trainer)) == 1 and term._now == pytest.approx(1.2)
    cfg.preserve_warmup = 0.0
    assert KLToBase(rows, cfg).weight_at(0, 10) == 2.0
    with pytest.raises(StropError, match="preserve_warmup: 1.0 is outside"):
        load_train_config(None, {"data": "x.jsonl", "preserve_warmup": 1.0})
    with pytest.raises(StropError, match="preserve_warmup: applies to preserve kl .*not none"):
        load_train_config(None, {"data": "x.jsonl", "preserve_warmup": 0.5, "preserve": "none"})


@pytest.mark.slow
def test_kl_rows_packed_into_the_task_row_train_as_a_separate_backward_does(tiny_model_dir, narrow_file, tmp_path,
                                                                            monkeypatch):
    """One forward and backward for both terms (the general rows joined to the micro-batch's packed row) gives
    the losses, KL values and adapter of the separate second backward, and the packed path is the one taken."""
    from safetensors.torch import load_file

    from strop.train.preserve_kl import KLToBase

    separate_calls = []
    original = KLToBase.after_task_step
    monkeypatch.setattr(KLToBase, "after_task_step",
                        lambda self, trainer, model, picked: (separate_calls.append(len(picked)),
                                                              original(self, trainer, model, picked))[1])

    def run(name, packed):
        separate_calls.clear()
        out = _train(tiny_model_dir, narrow_file, tmp_path / name, max_steps=4, preserve="kl", preserve_ratio=0.5,
                     mixed_precision="no", gradient_accumulation_steps=2, preserve_pack=packed)
        logs = [(r["loss"], r["preserve_kl"]) for r in out.read_metrics() if "preserve_kl" in r]
        return logs, load_file(str(out.final / "adapter_model.safetensors")), sum(separate_calls)

    packed_logs, packed_adapter, packed_separate = run("packed", True)
    plain_logs, plain_adapter, plain_separate = run("separate", False)
    assert packed_separate == 0 and plain_separate == 4 * 2 * 2  # 2 general rows per micro-batch, 2 per step
    assert len(packed_logs) == len(plain_logs) == 4
    for (loss_a, kl_a), (loss_b, kl_b) in zip(packed_logs, plain_logs):
        assert loss_a == pytest.approx(loss_b, abs=1e-4) and kl_a == pytest.approx(kl_b, abs=1e-4)
    moved = max(float(t.abs().max()) for t in packed_adapter.values())
    for key, tensor in packed_adapter.items():
        assert torch.allclose(tensor, plain_adapter[key], atol=1e-4 * moved), key  # measured: 5e-7 against 0.14


@pytest.mark.slow
def test_full_fine_tuning_keeps_a_snapshot_forgets_less_and_resumes_exactly(tiny_model_dir, narrow_file, tmp_path):
    """Full fine-tuning has no adapter to turn off: kl compares with the model as it was before its first step
    (its last hidden states on the general rows and a frozen copy of the output layer, which full fine-tuning
    moves). It forgets measurably less than --preserve none, still learns, and a resumed run compares with the
    same snapshot (the checkpoint loads after it is taken), so it ends where the straight run does."""
    import shutil

    from safetensors.torch import load_file

    from strop.train.preserve_kl import KLToBase

    full = dict(method="full", learning_rate=2e-3, max_steps=24, lora_dropout=None)
    none = _train(tiny_model_dir, narrow_file, tmp_path / "none", preserve="none", **full)
    kl = _train(tiny_model_dir, narrow_file, tmp_path / "kl", **full)
    base, tok, rec = _forgets_less_and_learns(tiny_model_dir, none, kl)
    assert rec["mode"] == "kl" and rec["why"] == "auto"

    # the snapshot is the model as it was: KL 0 against itself, and the output layer a copy, not the live one
    import contextlib
    from types import SimpleNamespace

    ids = tok("Who wrote Hamlet? Shakespeare wrote it.")["input_ids"]
    term = KLToBase([{"input_ids": ids, "labels": [-100] * 5 + ids[5:]}],
                    SimpleNamespace(preserve_ratio=0.5, micro_batch_size=4, preserve_weight=2.0, seed=0))
    term.snapshot(base, contextlib.nullcontext())
    with torch.no_grad():
        assert float(term.loss(base, [0])) < 1e-6
        base.get_output_embeddings().weight.mul_(1.5)  # tied to the input embeddings here: both move
        assert float(term.loss(base, [0])) > 1e-3

    short = dict(method="full", learning_rate=2e-3, max_steps=6, save_steps=3, mixed_precision="no",
                 preserve_ratio=0.5, lora_dropout=None)  # 2 general rows every micro-batch
    snapshots = []
    original = KLToBase.snapshot
    def counted(self, model, autocast):
        snapshots.append(float(model.get_output_embeddings().weight.detach().double().sum()))
        return original(self, model, autocast)
    KLToBase.snapshot = counted
    try:
        straight = _train(tiny_model_dir, narrow_file, tmp_path / "straight", **short)
        part = _train(tiny_model_dir, narrow_file, tmp_path / "part", **short)
        shutil.rmtree(part.checkpoints / "checkpoint-6")
        shutil.rmtree(part.final)
        resumed = _train(tiny_model_dir, narrow_file, tmp_path / "part", resume=True, **short)
    finally:
        KLToBase.snapshot = original
    assert len(set(snapshots)) == 1 and len(snapshots) == 3  # every run, the resumed one too, snapshots the base
    a, b = load_file(straight.final / "model.safetensors"), load_file(resumed.final / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    kls = [[r["preserve_kl"] for r in run.read_metrics() if "preserve_kl" in r] for run in (straight, resumed)]
    assert len(kls[1]) == 6 and kls[1] == pytest.approx(kls[0], abs=1e-6)

    # bottleneck adapters (method adapter) take the same snapshot: the term is on and moves the adapter
    adapter = _train(tiny_model_dir, narrow_file, tmp_path / "adapter", method="adapter", max_steps=4,
                     preserve_ratio=0.5, lora_dropout=None)
    rec = json.loads(adapter.summary.read_text())["preserve"]
    logged = [r["preserve_kl"] for r in adapter.read_metrics() if "preserve_kl" in r]
    # the first row is scored before any step: near 0 (the training forward rounds a little differently in bf16)
    assert rec["mode"] == "kl" and len(logged) == 4 and logged[0] < 0.01 * logged[-1]


def test_a_resume_keeps_the_protection_the_run_started_with(tmp_path):
    """``auto`` may resolve differently in a newer strop (full fine-tuning now gets kl): resuming a run that
    started without protection must not switch it on halfway, which would make the resume inexact."""
    from strop.core.rundir import RunDir
    from strop.train.reliability import check_preserve_mode

    run = RunDir(tmp_path / "run")
    check_preserve_mode(run, {"preserve": {"mode": "kl"}})  # no report yet: nothing to compare
    run.root.mkdir()
    run.data_report.write_text(json.dumps({"preserve": {"mode": "none", "why": "auto: method full ..."}}))
    check_preserve_mode(run, {"preserve": {"mode": "none"}})
    with pytest.raises(StropError, match="preserve resolved to kl now but the run started with none; "
                                         "pass --preserve none"):
        check_preserve_mode(run, {"preserve": {"mode": "kl"}})
