"""Task metrics during training: greedy answers to held-out prompts, scored into metrics.jsonl."""
from __future__ import annotations

import pytest

from strop.methods.options import load_train_config
from strop.core.errors import StropError
from strop.train.run import train


def _cfg(tiny_model_dir, chat_file, out, **kw):
    values = {"base_model": str(tiny_model_dir), "data": str(chat_file), "output_dir": str(out),
              "report_to": "none", "learning_rate": 5e-3, "micro_batch_size": 4, "logging_steps": 1}
    return load_train_config(None, values | kw)


def _gen_rows(run):
    return [r for r in run.read_metrics() if "gen_bleu" in r]


@pytest.mark.slow
def test_generation_metrics_at_each_evaluation(tiny_model_dir, chat_file, tmp_path):
    run = train(_cfg(tiny_model_dir, chat_file, tmp_path / "run", max_steps=4, val_size=3, eval_steps=2,
                     eval_generate_samples=2), progress=False)
    rows = _gen_rows(run)
    assert [r["step"] for r in rows] == [2, 4]
    evals = [r["step"] for r in run.read_metrics() if "eval_loss" in r]
    assert evals == [2, 4]  # one generation row per evaluation
    for r in rows:
        assert r["gen_samples"] == 2
        assert {"gen_bleu", "gen_rougeL", "gen_exact_match"} <= set(r)
        assert 0 <= r["gen_rougeL"] <= 1 and 0 <= r["gen_exact_match"] <= 1 and 0 <= r["gen_bleu"] <= 100


@pytest.mark.slow
def test_generation_metrics_every_n_steps(tiny_model_dir, chat_file, tmp_path):
    run = train(_cfg(tiny_model_dir, chat_file, tmp_path / "run", max_steps=3, val_size=2, eval_generate_samples=1,
                     eval_generate_every=1), progress=False)
    assert [r["step"] for r in _gen_rows(run)] == [1, 2, 3]


@pytest.mark.slow
def test_best_metric_keeps_the_checkpoint_with_the_best_task_metric(tiny_model_dir, chat_file, tmp_path, monkeypatch):
    """Scripted scores (a random tiny model's answers all score 0): the first of the two best is kept,
    where the loss, falling at this rate, would keep the last."""
    import json

    from safetensors.torch import load_file

    from strop.train import gen_metrics

    scripted = iter([0.2, 0.9, 0.5, 0.9])
    monkeypatch.setattr(gen_metrics, "score", lambda answers, refs: {"gen_rougeL": next(scripted), "gen_bleu": 0.0})
    run = train(_cfg(tiny_model_dir, chat_file, tmp_path / "run", max_steps=4, val_size=3, eval_steps=1,
                     eval_generate_samples=3, best_metric="rougeL", early_stopping_patience=0), progress=False)
    assert [r["gen_rougeL"] for r in run.read_metrics() if "gen_rougeL" in r] == [0.2, 0.9, 0.5, 0.9]
    losses = [r["eval_loss"] for r in run.read_metrics() if "eval_loss" in r]
    assert losses.index(min(losses)) != 1  # the loss alone would have kept another checkpoint
    summary = json.loads(run.summary.read_text())
    assert summary["best_metric"] == {"name": "gen_rougeL", "value": 0.9}
    assert summary["best_checkpoint"].endswith("checkpoint-2") and summary["best_eval_loss"] is None
    kept = load_file(run.root / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors")
    final = load_file(run.final / "adapter_model.safetensors")
    assert kept.keys() == final.keys() and all(kept[k].equal(final[k]) for k in kept)


def test_callback_hands_its_scores_to_the_evaluation(tiny_model_dir, chat_file, tmp_path):
    """The Trainer picks the best checkpoint from the metrics dict on_evaluate receives."""
    from types import SimpleNamespace

    from strop import models
    from strop.data import load
    from strop.train.callbacks import GenerationMetrics

    tok = models.load_tokenizer(str(tiny_model_dir))
    model = models.load_model(str(tiny_model_dir))
    cb = GenerationMetrics(tmp_path / "m.jsonl", tok, load(str(chat_file)).conversations[:2], max_new_tokens=4)
    metrics = {"eval_loss": 1.0}
    cb.on_evaluate(None, SimpleNamespace(global_step=3, epoch=1.0, is_world_process_zero=True), None, model=model,
                   metrics=metrics)
    assert {"eval_gen_rougeL", "eval_gen_bleu", "eval_gen_exact_match"} <= set(metrics)
    again = {"eval_loss": 1.0}  # the same step again (a second evaluation): the scores, not a second generation
    cb.on_evaluate(None, SimpleNamespace(global_step=3, epoch=1.0, is_world_process_zero=True), None, model=model,
                   metrics=again)
    assert again == metrics and len((tmp_path / "m.jsonl").read_text().splitlines()) == 1


def test_callback_leaves_model_and_tokenizer_as_found(tiny_model_dir, chat_file):
    from strop import models
    from strop.train.callbacks import GenerationMetrics
    from strop.data import load

    tok = models.load_tokenizer(str(tiny_model_dir))
    model = models.load_model(str(tiny_model_dir))
    model.train()
    cb = GenerationMetrics(chat_file.with_suffix(".log"), tok, load(str(chat_file)).conversations[:3], max_new_tokens=4)
    answers = cb.generate(model)
    assert len(answers) == 3 and model.training and tok.padding_side == "right"


@pytest.mark.parametrize("values, message", [
    ({"eval_generate_samples": -1}, "option eval_generate_samples: must be >= 0"),
    ({"eval_generate_every": 5}, "option eval_generate_every: set eval_generate_samples too"),
    ({"eval_generate_samples": 4, "val_size": 0}, "option eval_generate_samples: needs held-out rows"),
    ({"eval_generate_samples": 4, "objective": "dpo"}, "option eval_generate_samples: only used with --objective sft"),
    ({"best_metric": "rougeL"}, "option best_metric: rougeL is scored on greedy answers; set eval_generate_samples"),
    ({"best_metric": "rougeL", "eval_generate_samples": 2, "eval_generate_every": 5},
     "option best_metric: .*eval_generate_every"),
    ({"best_metric": "rougel"}, "unknown best_metric 'rougel'; did you mean rougeL"),
])
def test_config_errors(values, message):
    with pytest.raises(StropError, match=message):
        load_train_config(None, {"data": "x.jsonl"} | values)


def test_resume_refuses_another_best_metric(tmp_path):
    """The best value a run has kept is in its metric's units: resuming under another metric would compare
    a ROUGE-L with a loss."""
    import json

    from strop.train import reliability

    before = load_train_config(None, {"data": "x.jsonl"})
    after = load_train_config(None, {"data": "x.jsonl", "best_metric": "rougeL", "eval_generate_samples": 2})
    saved = tmp_path / "fingerprint.json"
    saved.write_text(json.dumps(reliability.fingerprint(before)))
    reliability.check_fingerprint(saved, reliability.fingerprint(before))
    with pytest.raises(StropError, match="cannot resume: best_metric changed since the run started"):
        reliability.check_fingerprint(saved, reliability.fingerprint(after))
