"""Training on the tiny model: loss goes down, run directory, round-trips, resume."""
from __future__ import annotations

import json

import pytest
import torch

from strop import models
from strop.methods.options import load_train_config
from strop.core.rundir import RunDir
from strop.train.run import train
from strop.train.save import save_final


def _cfg(tiny_model_dir, chat_file, out, **kw):
    values = {"base_model": str(tiny_model_dir), "data": str(chat_file), "output_dir": str(out),
              "report_to": "none", "learning_rate": 5e-3, "micro_batch_size": 4, "logging_steps": 1}
    values.update(kw)
    return load_train_config(None, values)


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.slow
def test_training_lowers_loss(tiny_model_dir, chat_file, tmp_path, method):
    lr = 1e-2 if method == "lora" else 1e-3
    run = train(_cfg(tiny_model_dir, chat_file, tmp_path / "run", method=method, max_steps=24, val_size=0,
                     learning_rate=lr, lr_scheduler_type="constant", warmup_ratio=0), progress=False)
    losses = [r["loss"] for r in run.read_metrics() if "loss" in r]
    assert len(losses) == 24
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first * 0.8, (first, last)
    summary = json.loads(run.summary.read_text())
    assert summary["trainable_params"] > 0 and summary["tokens_seen"] > 0
    assert (run.final / "tokenizer_config.json").is_file()
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    assert (run.final / weights).is_file()


def test_run_directory_layout_and_early_stopping(tiny_model_dir, chat_file, tmp_path, capsys):
    # A learning rate this high makes eval loss blow up, so patience 1 must stop early.
    run = train(_cfg(tiny_model_dir, chat_file, tmp_path / "run", num_epochs=20, val_size=3, eval_steps=1,
                     early_stopping_patience=1, learning_rate=0.5, lr_scheduler_type="constant",
                     report_to="tensorboard"), progress=False)
    assert "lowest loss on 3 validation rows" in capsys.readouterr().err  # keep_best on a few rows is fragile
    rows = run.read_metrics()
    evals = [r for r in rows if "eval_loss" in r]
    assert evals and max(r["step"] for r in rows) < 60  # 20 epochs x 3 steps would be 60
    summary = json.loads(run.summary.read_text())
    assert summary["best_eval_loss"] == pytest.approx(min(r["eval_loss"] for r in evals))
    assert run.config.is_file() and run.data_report.is_file()
    assert json.loads(run.data_report.read_text())["eval"]["rows"] == 3
    assert any((run.root / "tensorboard").rglob("events.out.tfevents.*"))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("method", ["lora", "full"])
def test_save_load_round_trip_identical_logits(tiny_model_dir, chat_file, tmp_path, method):
    from strop import methods

    cfg = _cfg(tiny_model_dir, chat_file, tmp_path / "run", method=method)
    model = methods.get(method).wrap(models.load_model(str(tiny_model_dir)), cfg)
    torch.manual_seed(1)
    with torch.no_grad():  # make the trained part non-trivial (LoRA B starts at zero)
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    model.eval()
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.config.write_text("")
    save_final(model, models.load_tokenizer(str(tiny_model_dir)), cfg, run)
    loaded, _ = models.load(str(run.root))
    ids = torch.tensor([[1, 50, 300, 7000, 12, 9]])
    assert torch.equal(_logits(model, ids), _logits(loaded, ids))


@pytest.mark.slow
def test_refuses_to_overwrite_and_resumes(tiny_model_dir, chat_file, tmp_path):
    from strop.core.errors import StropError

    common = dict(max_steps=6, save_steps=3, val_size=0, lora_dropout=0.0)
    full = train(_cfg(tiny_model_dir, chat_file, tmp_path / "a", **common), progress=False)
    with pytest.raises(StropError, match="already holds a run"):
        train(_cfg(tiny_model_dir, chat_file, tmp_path / "a", **common), progress=False)

    # Interrupted run: same config, but only the step-3 checkpoint survived.
    part = train(_cfg(tiny_model_dir, chat_file, tmp_path / "b", **common), progress=False)
    import shutil

    shutil.rmtree(part.checkpoints / "checkpoint-6")
    shutil.rmtree(part.final)
    resumed = train(_cfg(tiny_model_dir, chat_file, tmp_path / "b", resume=True, **common), progress=False)
    from safetensors.torch import load_file

    a = load_file(full.final / "adapter_model.safetensors")
    b = load_file(resumed.final / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    losses_a = [r["loss"] for r in full.read_metrics() if "loss" in r]
    losses_b = [r["loss"] for r in resumed.read_metrics() if "loss" in r]
    assert [r["step"] for r in resumed.read_metrics() if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert losses_b == pytest.approx(losses_a, abs=1e-6)


def test_resume_without_checkpoint_is_an_error(tiny_model_dir, chat_file, tmp_path):
    from strop.core.errors import StropError

    with pytest.raises(StropError, match="no complete checkpoint"):
        train(_cfg(tiny_model_dir, chat_file, tmp_path / "none", resume=True), progress=False)
