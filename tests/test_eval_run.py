"""`strop eval RUN --baselines --bias --labels ...` end to end on the tiny model, and its bad inputs."""
from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest
from conftest import free_port, strop_cmd, write_jsonl



@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    """A run directory whose 'tuned' weights are the tiny model itself, trained on a 2-label task."""
    root = tmp_path_factory.mktemp("evalrun")
    run = root / "run"
    shutil.copytree(tiny_model_dir, run / "final")
    (run / "final" / "strop_run.json").write_text(json.dumps({"system_prompt": "", "method": "full"}))
    rows = [{"messages": [{"role": "user", "content": f"Review {i}: it was {'great' if i % 2 else 'awful'}."},
                          {"role": "assistant", "content": "pos" if i % 2 else "neg"}],
             "group": "a" if i % 3 else "b"} for i in range(16)]
    train = write_jsonl(root / "train.jsonl", rows)
    (run / "config.yaml").write_text(f"base_model: {tiny_model_dir}\nmax_length: 128\ndata: {train}\nval_size: 8\nseed: 1\n")
    (run / "summary.json").write_text(json.dumps({"wall_s": 12.5}))
    return run


@pytest.fixture(scope="module")
def full_eval(run_dir):
    from strop.eval.run import evaluate

    return evaluate(str(run_dir), max_new_tokens=3, baselines=True, bias=True, labels=["pos", "neg"], k_shot=2,
                    resamples=200, judge_endpoint=f"http://127.0.0.1:{free_port()}/v1")


@pytest.mark.slow
def test_three_systems_with_intervals_and_paired_tests(full_eval, run_dir):
    m = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert list(m["systems"]) == ["base", "few-shot", "tuned"]
    assert m["n"] == 8 and "validation split" in m["data"]
    for system, scores in m["systems"].items():
        for key in ("perplexity", "bleu", "rougeL", "accuracy", "ll_accuracy"):
            lo, hi = m["intervals"][system][key]
            assert lo <= scores[key] + 1e-9 and scores[key] <= hi + 1e-9, (system, key)
    pairs = {(c["a"], c["b"]) for c in m["comparisons"]}
    assert pairs == {("tuned", "base"), ("tuned", "few-shot"), ("few-shot", "base")}
    same = [c for c in m["comparisons"] if (c["a"], c["b"]) == ("tuned", "base")]
    assert all(c["diff"] == pytest.approx(0, abs=1e-6) and c["p"] == 1.0 for c in same)  # same weights
    assert m["verdicts"] and all(isinstance(v, str) for v in m["verdicts"])


def test_few_shot_prompt_cost_and_training_time(full_eval):
    cost = full_eval["cost"]
    assert cost["training_wall_s"] == 12.5
    # two demonstrations and a system prompt make every few-shot request longer
    assert cost["few-shot"]["prompt_tokens_per_request"] > cost["base"]["prompt_tokens_per_request"] + 20
    assert cost["base"]["latency_s_per_request"] > 0
    prompt = full_eval["prompts"]["few_shot"]
    assert full_eval["prompts"]["k_shot"] == 2 and prompt.count("user: Review") == 2
    # the demonstrations come from training rows, never from the evaluated examples
    assert "Review" in prompt


def test_general_text_forgetting_is_reported(full_eval):
    g = full_eval["general_text"]
    assert g["paragraphs"] >= 20 and g["base"]["tokens"] > 2000
    assert g["base"]["perplexity"] == pytest.approx(g["tuned"]["perplexity"])
    assert g["forgetting"] is False
    assert full_eval["systems"]["tuned"]["general_text_perplexity"] == pytest.approx(g["tuned"]["perplexity"])


def test_classification_groups_bias_and_skipped_judge(full_eval, run_dir):
    c = full_eval["classification"]
    assert c["labels"] == ["pos", "neg"]
    conf = c["tuned"]["likelihood"]["confusion"]
    assert sum(map(sum, conf["matrix"])) == 8
    assert c["tuned"]["likelihood"]["accuracy"] == full_eval["systems"]["tuned"]["ll_accuracy"]
    assert set(full_eval["groups"]["tuned"]["groups"]) == {"a", "b"}  # auto-detected 'group' column
    b = full_eval["bias"]
    assert set(b["counterfactual_change"]) == {"gender", "ethnicity", "religion", "age", "nationality", "disability"}
    assert b["flags"] == []  # identical weights cannot get worse
    assert b["stereotypes"]["tuned"]["all"]["n"] == len(b["probes"]["pairs"])
    assert "skipped" in full_eval["judge"]
    page = (run_dir / "eval" / "report.html").read_text()
    for text in ("Which system wins", "Cost", "General text", "Classification", "Bias probes", "SKIPPED",
                 "Few-shot prompt", "worst tuned first", "biggest drop"):
        assert text in page, text
    for png in ("metrics.png", "bias_gaps.png", "confusion_tuned_likelihood.png"):
        assert (run_dir / "eval" / png).read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(x) for x in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 8 and all(r["parsed"] in ("pos", "neg", "<none>") for r in rows)


def test_bad_inputs_are_one_line_errors(run_dir, tmp_path):
    from strop.core.errors import StropError
    from strop.eval.run import evaluate

    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                             {"role": "assistant", "content": "pos"}]}] * 2)
    with pytest.raises(StropError, match="'neg' never occurs"):
        evaluate(str(run_dir), str(data), labels=["pos", "neg"])
    with pytest.raises(StropError, match="--baselines: needs a run directory"):
        evaluate(str(run_dir / "final"), str(data), baselines=True)
    with pytest.raises(StropError, match="--data: required"):
        evaluate(str(run_dir / "final"))
    with pytest.raises(StropError, match="no value in group column 'team'"):
        evaluate(str(run_dir), str(data), group_column="team", compare_base=False, max_new_tokens=2)


@pytest.mark.slow
def test_cli_reports_bad_labels_without_traceback(run_dir):
    proc = subprocess.run(strop_cmd("eval", str(run_dir), "--labels", "pos,neg,maybe"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("strop: --labels: 'maybe' never occurs")
    assert "Traceback" not in proc.stderr


def test_metric_values_are_finite(full_eval):
    for scores in full_eval["systems"].values():
        assert all(math.isfinite(v) for v in scores.values() if isinstance(v, float))
