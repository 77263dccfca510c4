"""Fault injection on the tiny model: kills, signals, changed inputs, NaNs, torn checkpoints."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import strop_cmd
from strop.methods.options import load_train_config
from strop.core.errors import StropError
from strop.core.manifest import MANIFEST, verify_manifest, write_manifest
from strop.core.rundir import RunDir
from strop.train.samples import read_rows
from strop.train.run import train

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


def _steps(run: Path) -> list[tuple[int, list[str]]]:
    """(step, sample ids) per optimizer step, from samples.jsonl."""
    return [(r["step"], r["ids"]) for r in read_rows(RunDir(run).samples)]


def _same_run(reference: Path, got: Path) -> None:
    """Bit-identical final weights, per-step losses and per-step samples."""
    a, b = _weights(reference), _weights(got)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ref_losses = [r["loss"] for r in RunDir(reference).read_metrics() if "loss" in r]
    assert [r["loss"] for r in RunDir(got).read_metrics() if "loss" in r] == ref_losses
    ref_steps, got_steps = _steps(reference), _steps(got)
    assert ref_steps and all(len(ids) == 2 for _, ids in ref_steps)  # micro_batch_size 2: two ids a step
    assert [s for s, _ in got_steps] == list(range(1, len(ref_steps) + 1))  # every step logged once
    assert got_steps == ref_steps  # no sample skipped, none repeated, same order


def _wait_rows(path: Path, n: int, proc, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.is_file() and sum(1 for _ in path.open()) >= n:
            return
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def fixed_threads(monkeypatch):
    """Bit-exact comparisons need one thread count throughout: the default (auto) resizes torch's pool to the
    machine's load between steps, which moves the low bits of the sums (docs/reliability.md). The children
    started here inherit the setting."""
    monkeypatch.setenv("STROP_THREADS", "fixed")


def _run_killed_after(step: int, args: list[str]) -> subprocess.CompletedProcess:
    """The CLI run with SIGKILL at an exact step (tests/reliability/kill_at_step.py), not after a timed wait."""
    return subprocess.run([sys.executable, str(KILLER), str(step), *args], capture_output=True, text=True, timeout=300)


KILLER = Path(__file__).with_name("kill_at_step.py")
STEPS = dict(max_steps=10, save_steps=2)


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(12)]
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def reference(tiny_model_dir, sft_data, tmp_path_factory) -> Path:
    """An uninterrupted 10-step run every fault test compares against."""
    out = tmp_path_factory.mktemp("reference") / "ref"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STROP_THREADS", "fixed")  # as fixed_threads below, which a module fixture cannot use
        return train(_cfg(tiny_model_dir, sft_data, out, **STEPS), progress=False).root


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


def test_resume_sets_damaged_newer_checkpoints_aside_and_says_why(tmp_path):
    from transformers.trainer_utils import get_last_checkpoint, sort_checkpoints

    from strop.train import reliability

    run = RunDir(tmp_path)
    for n in (2, 4, 6):
        d = run.checkpoints / f"checkpoint-{n}"
        d.mkdir(parents=True)
        (d / "trainer_state.json").write_text(json.dumps({"global_step": n}))
        (d / "a.safetensors").write_bytes(b"w" * 10)
        if n != 6:
            write_manifest(d)
    (run.checkpoints / "checkpoint-4" / "a.safetensors").write_bytes(b"x" * 10)  # tampered after sealing
    (run.checkpoints / "set-aside").mkdir()
    (run.checkpoints / "set-aside" / "checkpoint-6").mkdir()  # set aside by an earlier resume: kept too
    good = run.latest_checkpoint()
    assert good.name == "checkpoint-2"
    moved = reliability.set_aside_unsealed(run, good)
    line = reliability.resume_line(run, good, moved)
    assert line.startswith("strop: resuming from checkpoint-2 (step 2)") and "\n" not in line
    assert "set aside checkpoint-4 (a.safetensors does not match its sha256" in line
    assert "set aside checkpoint-6 (no manifest.json: a save cut short) as checkpoints/set-aside/checkpoint-6.1" in line
    assert (run.checkpoints / "set-aside" / "checkpoint-4" / "a.safetensors").read_bytes() == b"x" * 10
    assert (run.checkpoints / "set-aside" / "checkpoint-6.1" / "a.safetensors").is_file()
    # the Trainer's rotation and resume see only the good one
    assert [Path(p).name for p in sort_checkpoints(str(run.checkpoints))] == ["checkpoint-2"]
    assert Path(get_last_checkpoint(str(run.checkpoints))).name == "checkpoint-2"


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_bit_exact(tiny_model_dir, sft_data, reference, tmp_path):
    out = tmp_path / "killed"
    # killed after step 5: past the step-4 checkpoint, mid-way between saves
    killed = _run_killed_after(5, _cli_args(tiny_model_dir, sft_data, out, **STEPS))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "final").exists()
    assert len(_steps(out)) == 5  # the killed run logged a step past its last checkpoint; resume must rewind it
    resumed = subprocess.run(strop_cmd(*_cli_args(tiny_model_dir, sft_data, out, resume="true", **STEPS)),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _same_run(reference, out)
    first_epoch = [i for _, ids in _steps(reference)[:6] for i in ids]
    assert sorted(first_epoch) == sorted(f"{sft_data}:{n}" for n in range(1, 13))  # each example once per epoch


@pytest.mark.slow
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


# -- pickle-free checkpoints ---------------------------------------------------
def test_checkpoints_hold_no_pickle(reference):
    from strop.core.pickle_guard import is_pickle

    ckpts = sorted((reference / "checkpoints").glob("checkpoint-*"))
    assert ckpts
    for ckpt in ckpts:
        names = {p.name for p in ckpt.iterdir()}
        assert {"optimizer.safetensors", "optimizer.json", "scheduler.json", "rng_state.json",
                "training_args.json"} <= names, names
        for f in ckpt.rglob("*"):
            assert f.suffix not in (".bin", ".pt", ".pth", ".pkl"), f
            assert not is_pickle(f), f
            head = f.read_bytes()[:2]
            if f.suffix != ".safetensors":  # a safetensors header length may start with 0x80
                assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), f
        assert verify_manifest(ckpt)


# -- dying during a save -------------------------------------------------------
KILL_DURING_SAVE = """
import os, signal, sys
from strop.patches import checkpoints as checkpoint_io
real = checkpoint_io.save_state
def dying(obj, directory, stem):
    if stem == "scheduler" and str(directory).endswith("checkpoint-4"):
        os.kill(os.getpid(), signal.SIGKILL)  # the optimizer state is on disk, the rest is not
    return real(obj, directory, stem)
checkpoint_io.save_state = dying
from strop.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_during_save_resumes_from_previous_checkpoint(tiny_model_dir, sft_data, reference, tmp_path):
    import sys

    out = tmp_path / "torn"
    args = _cli_args(tiny_model_dir, sft_data, out, **STEPS)
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, *args], capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    torn = out / "checkpoints" / "checkpoint-4"
    assert (torn / "optimizer.json").is_file() and not (torn / MANIFEST).exists()
    assert RunDir(out).latest_checkpoint().name == "checkpoint-2"
    torn_files = sorted(p.name for p in torn.iterdir())
    resumed = subprocess.run(strop_cmd(*_cli_args(tiny_model_dir, sft_data, out, resume="true", **STEPS)),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _same_run(reference, out)
    # the torn save was moved aside, not deleted, and the user was told (one line) where and why
    aside = out / "checkpoints" / "set-aside" / "checkpoint-4"
    assert sorted(p.name for p in aside.iterdir()) == torn_files
    said = [line for line in resumed.stderr.splitlines() if "resuming from" in line]
    assert len(said) == 1, resumed.stderr[-2000:]
    assert "checkpoint-2" in said[0] and "checkpoint-4" in said[0] and "set-aside" in said[0], said
    assert "no manifest" in said[0], said
    assert "Traceback" not in resumed.stderr


def test_disk_full_during_save_keeps_last_checkpoint_and_says_so(tiny_model_dir, sft_data, reference, tmp_path,
                                                                 monkeypatch, capsys):
    import errno

    from strop.cli import main
    from strop.patches import checkpoints as checkpoint_io

    real = checkpoint_io.save_state

    def full(obj, directory, stem):
        if str(directory).endswith("checkpoint-4") and stem == "rng_state":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, directory, stem)

    monkeypatch.setattr(checkpoint_io, "save_state", full)
    out = tmp_path / "full"
    assert main(_cli_args(tiny_model_dir, sft_data, out, **STEPS)) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("strop: disk full") and "checkpoint-2" in err[0], err
    assert not (out / "checkpoints" / "checkpoint-4").exists()  # the partial save is gone, its space given back
    assert RunDir(out).latest_checkpoint().name == "checkpoint-2"
    assert not (out / "final").exists()
    monkeypatch.setattr(checkpoint_io, "save_state", real)
    train(_cfg(tiny_model_dir, sft_data, out, resume=True, **STEPS), progress=False)
    _same_run(reference, out)


@pytest.mark.parametrize("where", ["checkpoint-4", "final.tmp"])
def test_disk_full_in_tokenizer_save_is_one_line_exit_4(tiny_model_dir, sft_data, smol_tokenizer, tmp_path,
                                                        monkeypatch, capsys, where):
    """The Rust tokenizers library reports a full disk as a plain Exception, not an OSError."""
    from strop.cli import main

    cls = type(smol_tokenizer)
    real = cls.save_pretrained

    def full(self, save_directory, *a, **kw):
        if str(save_directory).endswith(where):
            raise Exception("No space left on device (os error 28)")
        return real(self, save_directory, *a, **kw)

    monkeypatch.setattr(cls, "save_pretrained", full)
    out = tmp_path / "fulltok"
    assert main(_cli_args(tiny_model_dir, sft_data, out, max_steps=4, save_steps=2)) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("strop: disk full") and "checkpoint-" in err[0], err
    assert "Traceback" not in err[0]
    assert not (out / "final").exists() and not (out / "final.tmp").exists()
    assert not (out / "checkpoints" / "checkpoint-4").exists() or where == "final.tmp"
    assert RunDir(out).latest_checkpoint().name == ("checkpoint-2" if where == "checkpoint-4" else "checkpoint-4")
    for ckpt in (out / "checkpoints").glob("checkpoint-*"):
        assert verify_manifest(ckpt), ckpt  # nothing partial left behind


def test_disk_full_while_writing_final_leaves_no_half_model(tiny_model_dir, sft_data, tmp_path, monkeypatch, capsys):
    import errno

    from strop.cli import main
    from strop.train import run as sft

    real = sft.save_final

    def full(model, tok, cfg, run, **kw):
        (run.root / "final.tmp").mkdir(exist_ok=True)
        (run.root / "final.tmp" / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sft, "save_final", full)
    out = tmp_path / "fullfinal"
    assert main(_cli_args(tiny_model_dir, sft_data, out, **STEPS)) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("strop: disk full"), err
    assert not (out / "final").exists() and not (out / "final.tmp").exists()
    assert RunDir(out).latest_checkpoint() is not None  # training's checkpoints survive
    monkeypatch.setattr(sft, "save_final", real)


@pytest.mark.slow
def test_second_ctrl_c_aborts_at_once(tiny_model_dir, sft_data, tmp_path):
    out = tmp_path / "intr"
    proc = subprocess.Popen(strop_cmd(*_cli_args(tiny_model_dir, sft_data, out, max_steps=400, save_steps=1000)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_rows(out / "samples.jsonl", 1, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert time.monotonic() - t0 < 30


# -- preference objectives resume exactly too ---------------------------------
@pytest.mark.slow
def test_dpo_sigkill_then_resume_is_bit_exact(tiny_model_dir, tmp_path):
    from strop.train.run import train as train_preference

    demo = Path(__file__).resolve().parents[2] / "src" / "strop" / "demo_data" / "pref_style_train.jsonl"
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(demo.read_text().splitlines(keepends=True)[:8]))
    dpo = dict(objective="dpo", max_length=96, max_steps=8, save_steps=2)
    reference = train_preference(_cfg(tiny_model_dir, data, tmp_path / "ref", **dpo), progress=False).root
    out = tmp_path / "killed"
    killed = _run_killed_after(5, _cli_args(tiny_model_dir, data, out, **dpo))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "final").exists() and len(_steps(out)) == 5
    resumed = subprocess.run(strop_cmd(*_cli_args(tiny_model_dir, data, out, resume="true", **dpo)),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _same_run(reference, out)
    margins = [r["rewards/margins"] for r in RunDir(reference).read_metrics() if "rewards/margins" in r]
    assert margins == [r["rewards/margins"] for r in RunDir(out).read_metrics() if "rewards/margins" in r]
