"""Preference curves from a synthetic metrics.jsonl, the preference eval page, and the judged win rate."""
from __future__ import annotations

import json

import pytest

from strop.report.curves import plot_curves
from strop.eval.preference_report import write_preference_report


def _dpo_rows(n=6):
    rows = []
    for s in range(1, n + 1):
        rows.append({"step": s, "epoch": s / n, "loss": 0.7 - 0.05 * s, "rewards/chosen": 0.1 * s,
                     "rewards/rejected": -0.1 * s, "rewards/margins": 0.2 * s, "rewards/accuracies": min(1.0, 0.5 + 0.1 * s)})
    rows.append({"step": n, "epoch": 1.0, "eval_loss": 0.4, "eval_rewards/margins": 1.5, "eval_rewards/accuracies": 1.0})
    return rows


def _grpo_rows(n=5):
    return [{"step": s, "epoch": s / n, "loss": 0.1, "reward": 0.5 + 0.05 * s, "reward_std": 0.2, "kl": 0.01 * s,
             "rewards/length_window/mean": 0.4 + 0.05 * s, "rewards/length_window/std": 0.3,
             "rewards/reference_agreement/mean": 0.3, "rewards/reference_agreement/std": 0.1} for s in range(1, n + 1)]


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dpo_curves_are_drawn(tmp_path):
    names = plot_curves(_dpo_rows(), tmp_path)
    assert names == ["pref_rewards.png", "pref_margin.png", "pref_accuracy.png"]
    assert all(_is_png(tmp_path / n) for n in names)
    assert not (tmp_path / "pref_kl.png").exists()  # DPO logs no kl


def test_grpo_curves_are_drawn(tmp_path):
    names = plot_curves(_grpo_rows(), tmp_path)
    assert names == ["pref_kl.png", "grpo_reward.png"]
    assert all(_is_png(tmp_path / n) for n in names)


def test_no_preference_keys_draws_nothing(tmp_path):
    assert plot_curves([{"step": 1, "loss": 1.0}], tmp_path / "none") == []
    assert not (tmp_path / "none").exists()


def test_preference_report_page(tmp_path):
    result = {"run": "runs/x", "objective": "grpo", "data": "held.jsonl", "prompts": 2, "kl_from_reference": 0.05,
              "base": {"rewards": {"m:f": {"mean": 0.4, "std": 0.1}}, "example": "a"},
              "tuned": {"rewards": {"m:f": {"mean": 0.7, "std": 0.1}}, "example": "b"},
              "judge": {"mode": "pairwise", "skipped": "judge endpoint http://x failed: URLError", "prompt": "P"}}
    page = write_preference_report(tmp_path, result, _grpo_rows()).read_text()
    assert '<img src="grpo_reward.png"' in page and '<img src="pref_kl.png"' in page
    assert "reward f" in page and "SKIPPED: judge endpoint http://x failed" in page and "Judge prompt" in page
    assert _is_png(tmp_path / "grpo_reward.png")


@pytest.mark.slow
def test_preference_eval_with_pairwise_judge(tiny_model_dir, tmp_path):
    """A tiny DPO run evaluated with a fake judge: win rate in preference.json, curves in report.html."""
    from conftest import DEMO_DATA, fake_chat_endpoint
    from test_eval_judge import _prefer_longer

    from strop.methods.options import load_train_config
    from strop.eval.preference import evaluate_run
    from strop.train.run import train

    heldout = tmp_path / "held.jsonl"
    heldout.write_text("".join((DEMO_DATA / "pref_style_heldout.jsonl").read_text().splitlines(True)[:4]))
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join((DEMO_DATA / "pref_style_train.jsonl").read_text().splitlines(True)[:8]))
    cfg = load_train_config(None, {"base_model": str(tiny_model_dir), "data": str(train_file), "objective": "dpo",
                                   "output_dir": str(tmp_path / "run"), "report_to": "none", "max_steps": 2,
                                   "val_size": 0, "micro_batch_size": 4, "learning_rate": 1e-3})
    run = train(cfg, progress=False)
    with fake_chat_endpoint(_prefer_longer) as url:
        result = evaluate_run(run.root, str(heldout), judge={"endpoint": url, "model": "fake", "mode": "pairwise"})
    j = result["judge"]
    assert j["n"] == 4 and j["wins"] + j["ties"] + j["losses"] + j["unparsed"] == 4 and j["swapped"] == 2
    assert len(j["examples"]) == 4 and j["examples"][0]["question"] == "What is the capital of Greece?"
    saved = json.loads((run.root / "eval" / "preference.json").read_text())
    assert saved["judge"]["prompt"].startswith("You are comparing two assistant answers")
    page = (run.root / "eval" / "report.html").read_text()
    assert "LLM judge (pairwise)" in page and '<img src="pref_margin.png"' in page


def test_reward_run_with_judge_is_one_line(tmp_path):
    from strop.core.errors import StropError
    from strop.eval.preference import evaluate_run

    (tmp_path / "config.yaml").write_text("objective: reward\nbase_model: m\ndata: d.jsonl\n")
    with pytest.raises(StropError, match="--judge: a reward-model run generates no answers"):
        evaluate_run(tmp_path, "held.jsonl", judge={"endpoint": "http://x/v1"})


def test_generation_metric_curves(tmp_path):
    from strop.report.curves import GEN_PANELS

    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 5)]
    rows += [{"step": s, "epoch": s / 4, "gen_bleu": 10.0 * s, "gen_rougeL": 0.1 * s, "gen_exact_match": 0.0}
             for s in (2, 4)]
    assert plot_curves(rows, tmp_path, GEN_PANELS) == ["gen_rouge.png", "gen_bleu.png"]
    assert _is_png(tmp_path / "gen_bleu.png")
    assert plot_curves(rows, tmp_path / "pref") == []  # SFT rows hold no preference keys


def test_sft_eval_report_shows_generation_curves(tmp_path):
    from strop.eval.report import write_eval_report

    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 5)]
    rows += [{"step": s, "gen_bleu": 10.0 * s, "gen_rougeL": 0.1 * s} for s in (2, 4)]
    pred = {"system": "base", "set": "eval", "where": "f:1", "prompt": "q", "reference": "r", "prediction": "p",
            "rougeL": 0.0}
    page = write_eval_report(tmp_path, "t", {"systems": {"base": {"bleu": 1.0}}, "intervals": {}}, [pred], rows)
    assert "Task metrics during training" in page.read_text() and _is_png(tmp_path / "gen_bleu.png")
