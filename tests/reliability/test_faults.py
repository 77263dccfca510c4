"""Fault injection on the tiny model: kills, signals, changed inputs, NaNs, torn checkpoints."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import strop_cmd
from strop.config import load_train_config
from strop.errors import StropError
from strop.train.manifest import MANIFEST, verify_manifest, write_manifest
from strop.train.rundir import RunDir
from strop.train.sft import train

EXACT = dict(lora_dropout=0.0, mixed_precision="no", val_size=0, report_to="none", learning_rate=5e-3,
             micro_batch_size=2, logging_steps=1)


def _cfg(tiny_model_dir, data, out, **kw):
    return load_train_config(None, {"base_model": str(tiny_model_dir), "data": str(data), "output_dir": str(out),
                                    **EXACT, **kw})


def _cli_args(tiny_model_dir, data, out, **kw):
    args = ["train"]
    for k, v in {"base_model": str(tiny_model_dir), "data": str(data), "output_dir": str(out), **EXACT, **kw}.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def _weights(run: Path) -> dict:
    return load_file(run / "final" / "adapter_model.safetensors")


def test_manifest_detects_tampering_and_torn_saves(tmp_path):
    ckpt = tmp_path / "checkpoints" / "checkpoint-4"
    ckpt.mkdir(parents=True)
    (ckpt / "a.bin").write_bytes(b"x" * 100)
    assert not verify_manifest(ckpt)  # no manifest yet: a save still in progress, or cut short
    write_manifest(ckpt)
    assert verify_manifest(ckpt)
    (ckpt / "a.bin").write_bytes(b"y" * 100)
    assert not verify_manifest(ckpt)
    # resume picks the newest checkpoint that verifies, skipping a torn newer one
    good = tmp_path / "checkpoints" / "checkpoint-2"
    good.mkdir()
    (good / "a.bin").write_bytes(b"z")
    write_manifest(good)
    torn = tmp_path / "checkpoints" / "checkpoint-6"
    torn.mkdir()
    (torn / "a.bin").write_bytes(b"half")
    assert RunDir(tmp_path).latest_checkpoint() == good


def test_sigkill_mid_run_then_resume_is_bit_exact(tiny_model_dir, chat_file, tmp_path):
    steps = dict(max_steps=10, save_steps=2)
    reference = train(_cfg(tiny_model_dir, chat_file, tmp_path / "ref", **steps), progress=False)

    out = tmp_path / "killed"
    proc = subprocess.Popen(strop_cmd(*_cli_args(tiny_model_dir, chat_file, out, **steps)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    # kill somewhere after the step-4 checkpoint, mid-way between saves when timing allows
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and sum(1 for _ in metrics.open()) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(strop_cmd(*_cli_args(tiny_model_dir, chat_file, out, resume="true", **steps)),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _weights(reference.root), _weights(out)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ref_losses = [r["loss"] for r in reference.read_metrics() if "loss" in r]
    got_losses = [r["loss"] for r in RunDir(out).read_metrics() if "loss" in r]
    assert got_losses == ref_losses


def test_sigterm_checkpoints_and_exits_distinctly(tiny_model_dir, chat_file, tmp_path):
    out = tmp_path / "term"
    proc = subprocess.Popen(strop_cmd(*_cli_args(tiny_model_dir, chat_file, out, max_steps=400, save_steps=1000)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (metrics.is_file() and metrics.stat().st_size > 0):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err
    assert "SIGTERM" in err and "Traceback" not in err
    ckpt = RunDir(out).latest_checkpoint()
    assert ckpt is not None and verify_manifest(ckpt)
    step = json.loads((ckpt / "trainer_state.json").read_text())["global_step"]
    assert 1 <= step < 400


def test_resume_refuses_changed_data_and_batch(tiny_model_dir, chat_file, tmp_path):
    out = tmp_path / "run"
    train(_cfg(tiny_model_dir, chat_file, out, max_steps=2, save_steps=2), progress=False)
    (out / "final").rename(out / "final-old")
    with pytest.raises(StropError, match="micro_batch|effective_batch changed"):
        train(_cfg(tiny_model_dir, chat_file, out, max_steps=4, save_steps=2, resume=True, micro_batch_size=3),
              progress=False)
    chat_file.write_text(chat_file.read_text() + chat_file.read_text().splitlines()[0] + "\n")
    with pytest.raises(StropError, match="data_sha256 changed"):
        train(_cfg(tiny_model_dir, chat_file, out, max_steps=4, save_steps=2, resume=True), progress=False)


class _PoisonAt:
    """Forward hook that turns the embeddings into NaN on the Nth training forward."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, module, inputs, output):
        if module.training:
            self.calls += 1
            if self.calls == self.n:
                return output * float("nan")
        return output


def _poisoned(monkeypatch, n: int) -> None:
    from strop import methods

    original = methods.METHODS["lora"]
    import dataclasses

    def wrap(model, cfg):
        model.get_input_embeddings().register_forward_hook(_PoisonAt(n))
        return original.wrap(model, cfg)

    monkeypatch.setitem(methods.METHODS, "lora", dataclasses.replace(original, wrap=wrap))


def test_nan_abort_writes_nothing_poisoned(tiny_model_dir, chat_file, tmp_path, monkeypatch):
    _poisoned(monkeypatch, 3)
    out = tmp_path / "nan"
    with pytest.raises(StropError, match="non-finite gradients at step 3") as err:
        train(_cfg(tiny_model_dir, chat_file, out, max_steps=6, save_steps=1), progress=False)
    assert err.value.exit_code == 3
    assert not (out / "final").exists()
    for ckpt in (out / "checkpoints").glob("checkpoint-*"):
        assert int(ckpt.name.split("-")[1]) < 3
        for t in load_file(ckpt / "adapter_model.safetensors").values():
            assert torch.isfinite(t).all()


def test_nan_skip_drops_one_update_and_finishes(tiny_model_dir, chat_file, tmp_path, monkeypatch):
    _poisoned(monkeypatch, 3)
    run = train(_cfg(tiny_model_dir, chat_file, tmp_path / "skip", max_steps=6, nan_policy="skip"), progress=False)
    summary = json.loads(run.summary.read_text())
    assert summary["skipped_nonfinite_steps"] == [3]
    for t in _weights(run.root).values():
        assert torch.isfinite(t).all()
