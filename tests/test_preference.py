"""Preference and RL objectives: each trains a few steps on the tiny model and moves its own metric."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from strop.methods.options import load_train_config
from strop.core.errors import StropError

DEMO = Path(__file__).resolve().parents[1] / "src" / "strop" / "demo_data"
PAIRS = DEMO / "pref_style_train.jsonl"
KTO = DEMO / "pref_style_kto.jsonl"


def _subset(src: Path, dst: Path, n: int) -> Path:
    dst.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return dst


def _cfg(tiny_model_dir, tmp_path, data, **extra):
    values = dict(base_model=str(tiny_model_dir), data=str(data), output_dir=str(tmp_path / "run"), report_to="none",
                  val_size=0, max_length=96, micro_batch_size=4, learning_rate=5e-3, warmup_ratio=0.0,
                  lr_scheduler_type="constant", logging_steps=1, mixed_precision="no")
    values.update(extra)
    return load_train_config(None, {k: str(v) if not isinstance(v, str) else v for k, v in values.items()})


def _series(run, key: str) -> list[float]:
    return [r[key] for r in run.read_metrics() if key in r]


def _rose(values: list[float], k: int = 2) -> bool:
    return sum(values[-k:]) / k > sum(values[:k]) / k


def _train(cfg):
    from strop.train.run import train

    return train(cfg, progress=False)


@pytest.mark.parametrize("objective, extra", [
    ("dpo", {}),
    ("dpo", {"dpo_loss_type": "ipo"}),
    ("dpo", {"dpo_loss_type": "robust", "label_smoothing": 0.1}),
    ("orpo", {}),
    ("simpo", {"beta": 2.0}),
    ("cpo", {}),
])
@pytest.mark.slow
def test_paired_objectives_raise_margin(objective, extra, tiny_model_dir, tmp_path):
    data = _subset(PAIRS, tmp_path / "pairs.jsonl", 8)
    run = _train(_cfg(tiny_model_dir, tmp_path, data, objective=objective, max_steps=8, **extra))
    margins = _series(run, "rewards/margins")
    assert len(margins) == 8 and _rose(margins), margins
    assert (run.final / "adapter_config.json").is_file()
    summary = json.loads(run.summary.read_text())
    assert summary["objective"] == objective and summary["steps"] == 8


@pytest.mark.slow
def test_dpo_full_uses_explicit_reference_and_eval_sees_it(tiny_model_dir, tmp_path):
    from strop.eval.preference import evaluate_run

    data = _subset(PAIRS, tmp_path / "pairs.jsonl", 8)
    run = _train(_cfg(tiny_model_dir, tmp_path, data, objective="dpo", method="full", max_steps=6, learning_rate=1e-3))
    assert (run.final / "model.safetensors").is_file()
    assert _rose(_series(run, "rewards/margins"))
    result = evaluate_run(run.root, str(data))
    # Trained on these pairs: the tuned model prefers chosen by more than the base does, and moved away from it.
    assert result["tuned"]["mean_margin"] > result["base"]["mean_margin"]
    assert result["kl_from_reference"] > 0
    assert json.loads((run.eval / "preference.json").read_text())["tuned"]["pairs"] == 8


@pytest.mark.slow
def test_kto_raises_margin(tiny_model_dir, tmp_path):
    data = _subset(KTO, tmp_path / "kto.jsonl", 16)
    run = _train(_cfg(tiny_model_dir, tmp_path, data, objective="kto", max_steps=8))
    margins = _series(run, "rewards/margins")
    assert margins and _rose(margins), margins
    assert _series(run, "kl"), "KTO logs its KL estimate"


def test_reward_model_learns_pairs(tiny_model_dir, tmp_path):
    from strop.eval.preference import evaluate_run

    data = _subset(PAIRS, tmp_path / "pairs.jsonl", 8)
    run = _train(_cfg(tiny_model_dir, tmp_path, data, objective="reward", max_steps=8))
    margin = _series(run, "margin")
    assert _rose(margin), margin
    result = evaluate_run(run.root, str(data))
    assert result["reward_model"]["mean_margin"] > 0


REWARD_MODULE = '''
def short(prompts, completions, **kwargs):
    return [-len(c) / 50 for c in completions]

def words(prompts, completions, **kwargs):
    return ["many" for c in completions]
'''


@pytest.mark.slow
def test_grpo_raises_rule_reward(tiny_model_dir, tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = _subset(PAIRS, tmp_path / "pairs.jsonl", 8)
    run = _train(_cfg(tiny_model_dir, tmp_path, data, objective="grpo", reward_funcs="my_rewards:short",
                      max_steps=10, num_generations=4, micro_batch_size=8, max_completion_length=8,
                      learning_rate=2e-2, beta=0.04))
    reward = _series(run, "reward")
    assert len(reward) == 10 and _rose(reward, 3), reward
    assert _series(run, "kl")


def test_grpo_non_numeric_reward_is_one_line(tiny_model_dir, tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = _subset(PAIRS, tmp_path / "pairs.jsonl", 4)
    cfg = _cfg(tiny_model_dir, tmp_path, data, objective="grpo", reward_funcs="my_rewards:words", max_steps=1,
               num_generations=2, micro_batch_size=2, max_completion_length=4)
    with pytest.raises(StropError, match=r"my_rewards:words: returned 'many' for completion 0, not a finite number"):
        _train(cfg)


# --- bad input, no training -------------------------------------------------------------------------------------


def test_kto_with_paired_data_is_refused(tiny_model_dir, tmp_path, smol_tokenizer):
    from strop.train.preference_data import build_rows

    cfg = _cfg(tiny_model_dir, tmp_path, PAIRS, objective="kto")
    with pytest.raises(StropError, match="KTO needs rows with a true/false label"):
        build_rows(cfg, smol_tokenizer)


def test_dpo_with_unpaired_data_is_refused(tiny_model_dir, tmp_path, smol_tokenizer):
    from strop.train.preference_data import build_rows

    with pytest.raises(StropError, match="--objective dpo needs paired preference"):
        build_rows(_cfg(tiny_model_dir, tmp_path, KTO, objective="dpo"), smol_tokenizer)


def test_row_missing_a_side_names_the_line(tiny_model_dir, tmp_path, smol_tokenizer):
    from strop.train.preference_data import build_rows

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}) + "\n"
                   + json.dumps({"prompt": "Hi again?", "chosen": "Hello again."}) + "\n")
    with pytest.raises(StropError, match=r"bad.jsonl:2"):
        build_rows(_cfg(tiny_model_dir, tmp_path, bad, objective="dpo"), smol_tokenizer)


def test_kto_with_one_label_only_is_refused(tiny_model_dir, tmp_path, smol_tokenizer):
    from strop.train.preference_data import build_rows

    rows = [json.loads(x) for x in KTO.read_text().splitlines()]
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in rows if r["label"]))
    with pytest.raises(StropError, match="labelled desirable"):
        build_rows(_cfg(tiny_model_dir, tmp_path, good, objective="kto"), smol_tokenizer)


@pytest.mark.parametrize("values, message", [
    ({"objective": "ppo"}, "unknown objective 'ppo'"),
    ({"dpo_loss_type": "ipo"}, "option dpo_loss_type does not apply to --objective sft"),
    ({"objective": "orpo", "dpo_loss_type": "ipo"}, "does not apply to --objective orpo"),
    ({"objective": "dpo", "dpo_loss_type": "hinge"}, "not one of sigmoid, ipo, robust"),
    ({"objective": "dpo", "label_smoothing": "0.1"}, "only used with --dpo-loss-type robust"),
    ({"objective": "grpo"}, "name at least one reward"),
    ({"objective": "grpo", "reward_funcs": "just_a_name"}, "is not module:function"),
    ({"objective": "grpo", "reward_funcs": "a:b", "num_generations": "1"}, "needs at least 2"),
    ({"objective": "grpo", "reward_funcs": "a:b", "num_generations": "3"}, "must be a multiple of num_generations"),
    ({"objective": "dpo", "method": "prompt_tuning"}, "works with lora, dora, qlora, full"),
])
def test_config_errors(values, message):
    with pytest.raises(StropError, match=message):
        load_train_config(None, values)


def test_reward_loading_errors(tmp_path, monkeypatch):
    from strop.train import rewards

    with pytest.raises(StropError, match="cannot import no_such_module_xyz"):
        rewards.load("no_such_module_xyz:f")
    with pytest.raises(StropError, match="has no function 'nope'"):
        rewards.load("strop.train.rewards:nope")
    (tmp_path / "broken_rewards.py").write_text("import definitely_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(StropError, match="ModuleNotFoundError"):
        rewards.load("broken_rewards:f")
    short = rewards.checked(lambda prompts, completions, **kw: [1.0], "m:f")
    with pytest.raises(StropError, match="must return a list of 2 numbers, got 1 values"):
        short(["p", "p"], ["a", "b"])


def test_example_rewards():
    from strop.train import rewards

    comps = ["Paris.", "the answer is " + "very " * 30 + "long", ""]
    assert rewards.length_window(None, comps) == [0.0 + 1 - 2 / 20, 1 - (34 - 20) / 20, 1 - 3 / 20]
    assert rewards.length_window(None, ["one two"], min_words=[1], max_words=[2]) == [1.0]
    assert rewards.regex_match(None, ["Paris is the capital.", "paris"]) == [1.0, 0.0]
    assert rewards.regex_match(None, ["42"], pattern=[r"\d+"]) == [1.0]
    assert rewards.keyword_coverage(None, ["Tokyo is big", "Kyoto"], keyword=["tokyo", "Tokyo"]) == [1.0, 0.0]
    assert rewards.keyword_coverage(None, ["red and blue"], keywords=[["red", "green"]]) == [0.5]
    agree = rewards.reference_agreement(None, ["The capital is Paris.", "No idea"], reference=["Paris is the capital."] * 2)
    assert agree[0] == 1.0 and agree[1] == 0.0
    with pytest.raises(StropError, match="need a 'keyword'"):
        rewards.keyword_coverage(None, ["x"])


def test_completions_end_at_end_of_turn(smol_tokenizer, tmp_path):
    from strop.data.records import Message
    from strop.train.preference_data import split_texts

    prompt, completion = split_texts(smol_tokenizer, [Message("user", "Hi?")], [Message("assistant", "Hello.")],
                                     "Be brief.", "x")
    assert prompt.endswith("<|im_start|>assistant\n") and "Be brief." in prompt
    assert completion == "Hello.<|im_end|>"


def test_cli_reports_bad_objective_data_in_one_line(tmp_path, capsys):
    from strop.cli import main

    code = main(["train", "--objective", "kto", "--data", str(PAIRS), "--output-dir", str(tmp_path / "r"),
                 "--report-to", "none"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("strop: ") and len(err.strip().splitlines()) == 1


def test_checkpoint_layers_is_refused_for_preference_objectives(tiny_model_dir, tmp_path):
    """TRL's DPO trainer re-enables checkpointing on every layer around its reference pass, so a partial
    count would be silently dropped; strop says so instead."""
    data = _subset(PAIRS, tmp_path / "pairs.jsonl", 4)
    cfg = _cfg(tiny_model_dir, tmp_path, data, objective="dpo", max_steps=1, gradient_checkpointing="true",
               checkpoint_layers=1)
    with pytest.raises(StropError, match="checkpoint_layers: works with objective sft only"):
        _train(cfg)


@pytest.mark.slow
def test_preference_runs_pass_the_license_gate_and_record_the_environment(tiny_model_dir, tmp_path):
    rows = [json.loads(line) | {"license": "cc-by-nc-sa-4.0"} for line in PAIRS.read_text().splitlines()[:8]]
    data = tmp_path / "noncommercial.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(StropError, match="commercial use is not allowed"):
        _train(_cfg(tiny_model_dir, tmp_path, data, objective="dpo", max_steps=1, intended_use="commercial",
                    output_dir=tmp_path / "refused"))
    assert not (tmp_path / "refused" / "final").exists()
    run = _train(_cfg(tiny_model_dir, tmp_path, data, objective="dpo", max_steps=1, intended_use="research"))
    assert json.loads((run.root / "env.json").read_text())
    summary = json.loads(run.summary.read_text())
    assert summary["objective"] == "dpo" and summary["licenses"]["use"] == "research"


@pytest.mark.slow
def test_dpo_scores_only_completion_positions_and_learns_the_same(tiny_model_dir, tmp_path, monkeypatch):
    """DPO's log-probabilities go through TRL's fused LM head; on a CPU strop's compact path
    (patches/lm_head.py) projects only the completion positions. The same run with the lever off
    (TRL's every-position path) gives the same losses, margins and adapter, in float32."""
    import torch
    import trl.trainer.utils as tu
    from safetensors.torch import load_file

    rows_scored = []

    class Spy(tu._ChunkedLogProbFunction):
        @classmethod
        def apply(cls, hidden, *args):
            rows_scored[-1] += hidden.shape[0]
            return super().apply(hidden, *args)

    monkeypatch.setattr(tu, "_ChunkedLogProbFunction", Spy)
    data = _subset(PAIRS, tmp_path / "pairs.jsonl", 8)
    runs = {}
    for compact in (False, True):
        rows_scored.append(0)
        runs[compact] = _train(_cfg(tiny_model_dir, tmp_path, data, objective="dpo", max_steps=3,
                                    score_labelled_only=compact, output_dir=tmp_path / f"compact-{compact}"))
    every, only = rows_scored
    assert 0 < only < every / 2, rows_scored  # the prompts and the padding were scored by one path only
    for key in ("loss", "rewards/margins", "rewards/chosen"):
        a, b = _series(runs[False], key), _series(runs[True], key)
        assert len(a) == 3 and a == pytest.approx(b, abs=1e-5), (key, a, b)
    full, compact = (load_file(runs[c].final / "adapter_model.safetensors") for c in (False, True))
    assert full.keys() == compact.keys()
    # Adam divides each gradient by its own running size, so where a gradient is near zero the two paths'
    # different summation orders show in the weights (5e-5 at most here after three steps): far below what
    # the steps moved them (every lora_B starts at zero and ends above 1e-2)
    assert min(float(full[n].abs().max()) for n in full if "lora_B" in n) > 5e-3
    for name in full:
        torch.testing.assert_close(compact[name], full[name], rtol=0, atol=2e-4, msg=name)
