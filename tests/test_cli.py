"""The command line: bad input gives one clear line and a non-zero exit, never a traceback."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import DEMO_DATA, PEER, strop_cmd


def run(*args, cwd=None):
    return subprocess.run(strop_cmd(*args), capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("strop: ")
    for f in fragments:
        assert f in lines[0], lines[0]


def test_help_is_fast_and_lists_commands():
    proc = run("--help")
    assert proc.returncode == 0
    for cmd in ("train", "generate", "chat", "eval", "data", "serve", "models", "demo"):
        assert cmd in proc.stdout


@pytest.mark.slow
def test_missing_data_file(tmp_path):
    assert_one_line_error(run("train", "--data", str(tmp_path / "none.jsonl"), "--output-dir", str(tmp_path / "r")),
                          "none.jsonl: file not found")


def test_unknown_config_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lora_rank: 8\n")
    assert_one_line_error(run("train", str(cfg)), "c.yaml: unknown key 'lora_rank'", "lora_r")


def test_unknown_option():
    assert_one_line_error(run("train", "--learning-rat", "1e-4"), "--learning-rate")


@pytest.mark.slow
def test_malformed_json_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n{oops\n')
    assert_one_line_error(run("data", "check", str(bad)), "bad.jsonl:2: invalid JSON")
    assert_one_line_error(run("train", "--data", str(bad), "--output-dir", str(tmp_path / "r")), "bad.jsonl:2")


@pytest.mark.slow
def test_unknown_format_and_empty_conversation(tmp_path):
    f1 = tmp_path / "f.jsonl"
    f1.write_text('{"question": "a", "answer": "b"}\n')
    assert_one_line_error(run("data", "check", str(f1)), "f.jsonl:1: unknown data format")
    f2 = tmp_path / "e.jsonl"
    f2.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n{"messages": []}\n')
    assert_one_line_error(run("data", "check", str(f2)), "e.jsonl:2: empty conversation")


@pytest.mark.slow
def test_missing_model_dir(tmp_path):
    assert_one_line_error(run("generate", str(tmp_path / "nomodel"), "--prompt", "hi"), "nomodel")


@pytest.mark.slow
def test_hub_id_offline_explains(tmp_path, monkeypatch):
    env_proc = subprocess.run(strop_cmd("generate", "someorg/some-model-that-is-not-here", "--prompt", "hi"),
                              capture_output=True, text=True, timeout=120,
                              env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert_one_line_error(env_proc, "someorg/some-model-that-is-not-here", "local model directory")


@pytest.mark.slow
def test_data_check_report_and_json(tmp_path):
    out = tmp_path / "r.json"
    proc = run("data", "check", str(PEER / "alpaca_en_demo.json"), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "999 conversations, format alpaca" in proc.stdout
    report = json.loads(out.read_text())
    assert report["rows"] == 999 and report["tokens"]["max"] > report["tokens"]["median"]


def test_models_lists_alias():
    proc = run("models")
    assert proc.returncode == 0
    assert "smollm2-135m-instruct" in proc.stdout and "Apache-2.0" in proc.stdout


@pytest.mark.slow
def test_train_generate_eval_on_tiny_model(tiny_model_dir, chat_file, tmp_path):
    out = tmp_path / "run"
    proc = run("train", "--base-model", str(tiny_model_dir), "--data", str(chat_file), "--output-dir", str(out),
               "--max-steps", "3", "--report-to", "none", "--val-size", "2")
    assert proc.returncode == 0, proc.stderr
    assert "run directory:" in proc.stdout
    gen = run("generate", str(out), "--prompt", "What is 2 plus 2?", "--max-new-tokens", "5")
    assert gen.returncode == 0, gen.stderr
    ev = run("eval", str(out), "--data", str(chat_file), "--max-new-tokens", "4")
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(metrics["systems"]) == {"base", "tuned"}
    assert (out / "eval" / "report.html").is_file()


def test_models_path_unknown_alias_fails_with_one_line():
    proc = run("models", "path", "no-such-model-alias")
    assert_one_line_error(proc, "no-such-model-alias")
    assert proc.stdout == ""


@pytest.fixture
def pickled_model(tiny_model_dir, tmp_path):
    """The tiny model with its weights as pytorch_model.bin only (what older tools write)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    d = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, d)
    torch.save(load_file(d / "model.safetensors"), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    return d


@pytest.mark.slow
def test_generate_chat_eval_take_allow_pickle(pickled_model, chat_file, tmp_path, capsys, monkeypatch):
    """The refusal names --allow-pickle, so every command that loads weights must take it."""
    import io

    from strop.cli import main

    for cmd in (["generate", str(pickled_model), "--prompt", "hi", "--max-new-tokens", "2"],
                ["chat", str(pickled_model), "--max-new-tokens", "2"],
                ["eval", str(pickled_model), "--data", str(chat_file), "--max-new-tokens", "2",
                 "--output", str(tmp_path / f"ev-{len(tmp_path.name)}"), "--resamples", "10"]):
        monkeypatch.setattr("sys.stdin", io.StringIO("hello\n\n"))
        assert main(cmd) == 2, cmd
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pytorch_model.bin" in err[0] and "--allow-pickle" in err[0], err
        monkeypatch.setattr("sys.stdin", io.StringIO("hello\n\n"))
        if cmd[0] == "eval":
            cmd[cmd.index("--output") + 1] += "-allowed"
        assert main([*cmd, "--allow-pickle"]) == 0, (cmd, capsys.readouterr().err)
        capsys.readouterr()
