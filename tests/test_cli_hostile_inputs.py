"""Hostile command-line input: one line naming the option or file, a non-zero exit, before any model loads.

Each case runs `strop` in this process (strop.cli.main) and fails on its option checks, so no weights are read
except where a corrupt weights file is the point of the test (the tiny model of conftest.py).
"""
from __future__ import annotations

import json
import math
import shutil

import pytest

from strop import models
from strop.cli import main
from strop.core.config import read_train_config
from strop.core.errors import StropError


def one_line_error(capsys, argv, *fragments, code=2):
    """``strop ARGV`` exits ``code`` with one ``strop: ...`` line holding every fragment."""
    assert main(argv) == code, argv
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("strop: ") and "Traceback" not in err[0], err
    for f in fragments:
        assert f in err[0], (f, err[0])
    return err[0]


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """No test here may reach for the network: the hub counts as unreachable."""
    monkeypatch.setattr(models, "_HUB_PROBE", [])
    monkeypatch.setattr(models, "_probe_hub", lambda: "huggingface.co cannot be reached: test")


# -- strop plan ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("option, value, fragment", [
    ("--rows", "0", "must be at least 1, got 0"),
    ("--rows", "-5", "must be at least 1, got -5"),
    ("--measure-steps", "0", "must be at least 1"),
    ("--price-per-hour", "-3", ">= 0, got -3.0"),
    ("--price-per-hour", "inf", "got inf"),
    ("--price-per-hour", "nan", "got nan"),
    ("--utilisation", "2", "(0, 1]"),
    ("--utilisation", "0", "(0, 1]"),
    ("--utilisation", "nan", "got nan"),
    ("--utilisation", "-0.5", "(0, 1]"),
])
def test_plan_rejects_numbers_the_estimate_cannot_use(capsys, option, value, fragment):
    one_line_error(capsys, ["plan", option, value], f"option {option}:", fragment)


def test_plan_json_creates_its_folder(capsys, tmp_path, tiny_model_dir):
    out = tmp_path / "new" / "deeper" / "p.json"
    assert main(["plan", "--base-model", str(tiny_model_dir), "--rows", "10", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["data"]["rows"] == 10
    capsys.readouterr()


def test_train_hub_error_names_base_model(capsys, tmp_path, chat_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, ["train", "--data", str(chat_file), "--base-model", "someorg/not-here",
                            "--output-dir", str(tmp_path / "run"), "--max-steps", "1"],
                   "'someorg/not-here'", "point --base-model at")


# -- strop train: the config's numbers ---------------------------------------------------------------------
@pytest.mark.parametrize("option, value, fragment", [
    ("--val-size", "nan", "not a finite number"),
    ("--val-size", "inf", "not a finite number"),
    ("--val-size", "2.5", "neither a fraction below 1 nor a whole number"),
    ("--val-size", "-0.1", "must be >= 0"),
    ("--learning-rate", "nan", "not a finite number"),
    ("--learning-rate", "-1", "outside (0, 1)"),
    ("--num-epochs", "inf", "not a finite number"),
    ("--num-epochs", "-1", "must be >= 0"),
    ("--lora-r", "0", "at least 1"),
    ("--lora-alpha", "0", "at least 1"),
    ("--lora-dropout", "nan", "not a finite number"),
    ("--lora-dropout", "1", "outside [0, 1)"),
    ("--micro-batch-size", "0", "at least 1"),
    ("--gradient-accumulation-steps", "-2", "at least 1"),
    ("--max-length", "1e400", "not a finite number"),
    ("--max-length", "0", "at least 1"),
    ("--warmup-ratio", "1.5", "outside [0, 1]"),
    ("--warmup-ratio", "nan", "not a finite number"),
    ("--weight-decay", "-0.1", "must be >= 0"),
    ("--max-grad-norm", "-1", "must be >= 0"),
    ("--seed", "-1", "outside 0 to"),
    ("--preserve-weight", "nan", "not a finite number"),
    ("--preserve-weight", "0", "outside (0, 100]"),
    ("--preserve-ratio", "-1", "outside [0, 4]"),
    ("--preserve-ratio", "inf", "not a finite number"),
    ("--preserve-warmup", "1", "outside [0, 1)"),
    ("--preserve-warmup", "nan", "not a finite number"),
    ("--beta", "nan", "not a finite number"),
    ("--neftune-noise-alpha", "-inf", "not a finite number"),
    ("--loss-spike-factor", "nan", "not a finite number"),
    ("--eval-steps", "-1", "must be >= 0"),
    ("--save-steps", "-1", "must be >= 0"),
    ("--early-stopping-patience", "-1", "must be >= 0"),
])
def test_train_rejects_bad_numbers_before_reading_data(capsys, tmp_path, option, value, fragment):
    key = option[2:].replace("-", "_")
    one_line_error(capsys, ["train", "--data", str(tmp_path / "none.jsonl"), option, value],
                   f"option {key}:", fragment)


@pytest.mark.parametrize("values", [
    {"val_size": "0"}, {"val_size": "0.2"}, {"val_size": "3"}, {"val_size": "3.0"}, {"learning_rate": "1e-4"},
    {"num_epochs": "0.5"}, {"num_epochs": "0", "max_steps": "5"}, {"lora_dropout": "0"}, {"warmup_ratio": "1"},
    {"weight_decay": "0.01"}, {"max_grad_norm": "0"}, {"seed": "0"}, {"preserve_ratio": "0"}, {"eval_steps": "0"},
])
def test_train_keeps_valid_numbers(values):
    cfg = read_train_config(None, values).validate()
    for key, text in values.items():
        assert math.isclose(float(getattr(cfg, key)), float(text))


def test_yaml_nan_is_refused_naming_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: .nan\n")
    with pytest.raises(StropError, match="option learning_rate: .*not a finite number"):
        read_train_config(str(cfg), {})


def test_train_on_a_directory_says_so(capsys, tmp_path):
    (tmp_path / "adir").mkdir()
    one_line_error(capsys, ["train", str(tmp_path / "adir")], "is a directory, not a config file", "--data")


def test_plan_on_a_directory_says_so(capsys, tmp_path):
    one_line_error(capsys, ["plan", str(tmp_path)], "is a directory, not a config file")


# -- strop generate / chat / eval ------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["generate", "chat"])
@pytest.mark.parametrize("option, value, fragment", [
    ("--temperature", "-1", "option --temperature: must be a finite number >= 0"),
    ("--temperature", "nan", "got nan"),
    ("--temperature", "inf", "got inf"),
    ("--max-new-tokens", "-1", "option --max-new-tokens: must be at least 1, got -1"),
    ("--max-new-tokens", "0", "got 0"),
])
def test_generate_and_chat_check_decoding_options(capsys, tmp_path, command, option, value, fragment):
    argv = [command, str(tmp_path / "no-model"), option, value] + (["--prompt", "hi"] if command == "generate" else [])
    one_line_error(capsys, argv, fragment)


def test_eval_checks_max_new_tokens(capsys, tmp_path):
    one_line_error(capsys, ["eval", str(tmp_path / "no-model"), "--data", "x.jsonl", "--max-new-tokens", "-1"],
                   "option --max-new-tokens: must be at least 1, got -1")


def test_missing_path_like_model_fails_at_once(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    one_line_error(capsys, ["generate", "runs/nope", "--prompt", "hi"], "runs/nope: no such model directory or file")
    one_line_error(capsys, ["generate", "./nope", "--prompt", "hi"], "./nope: no such model directory or file")


def test_unreachable_hub_names_the_commands_own_option(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["generate", "someorg/not-here", "--prompt", "hi"],
                          "'someorg/not-here'", "huggingface.co cannot be reached", "the model argument")
    assert "--base-model" not in line
    with models.named_by("--base-model"):
        assert "point --base-model at" in str(models._hub_error("someorg/x", OSError("x")))
    assert "point the model argument at" in str(models._hub_error("someorg/x", OSError("x")))


def test_hub_probe_honours_offline_variable(monkeypatch):
    monkeypatch.undo()  # the real probe: with HF_HUB_OFFLINE set it must not touch the network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_HUB_PROBE", [])
    assert models.hub_unreachable() == "HF_HUB_OFFLINE is set"
    assert models._offline_kwargs("someorg/x") == {"local_files_only": True}  # the hub cache, no retries
    assert models._offline_kwargs(models.cache_root()) == {}  # a local path is never a hub request


# -- corrupt weights ---------------------------------------------------------------------------------------
def test_corrupt_model_safetensors_is_named(capsys, tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "model.safetensors").write_bytes(b"garbage\n")
    one_line_error(capsys, ["generate", str(model), "--prompt", "hi", "--max-new-tokens", "2"],
                   "model.safetensors: not a valid safetensors file")


def test_corrupt_adapter_safetensors_is_named(capsys, tmp_path, tiny_model_dir):
    from peft import LoraConfig

    adapter = tmp_path / "adapter"
    LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], base_model_name_or_path=str(tiny_model_dir),
               task_type="CAUSAL_LM").save_pretrained(adapter)
    (adapter / "adapter_model.safetensors").write_bytes(b"garbage\n")
    one_line_error(capsys, ["generate", str(adapter), "--prompt", "hi", "--max-new-tokens", "2"],
                   f"{adapter / 'adapter_model.safetensors'}: not a valid safetensors file", "header")


# -- strop serve -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("option, value, fragment", [
    ("--port", "99999", "option --port: must be 1 to 65535, got 99999"),
    ("--port", "0", "got 0"),
    ("--port", "-1", "got -1"),
    ("--host", "", "option --host: empty"),
    ("--host", "  ", "option --host: empty"),
    ("--max-batch", "0", "option --max-batch: must be at least 1"),
    ("--max-waiting", "-1", "option --max-waiting"),
    ("--max-tokens-cap", "0", "option --max-tokens-cap"),
    ("--drain-timeout", "nan", "option --drain-timeout"),
    ("--drain-timeout", "-1", "option --drain-timeout"),
])
def test_serve_checks_options_before_loading(capsys, tmp_path, option, value, fragment):
    one_line_error(capsys, ["serve", str(tmp_path / "no-model"), option, value], fragment)


# -- strop export ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, fragment", [
    (["--dtype", "float7"], "option --dtype: 'float7' is not one of float32, bfloat16, float16"),
    (["--format", "gguf", "--dtype", "float16"], "option --dtype: applies to --format merged"),
    (["--prompts", "0"], "option --prompts:"),
    (["--min-greedy", "2"], "option --min-greedy: 2.0 is not a fraction"),
    (["--min-greedy", "nan"], "option --min-greedy: nan"),
])
def test_export_checks_options_first(capsys, tmp_path, extra, fragment):
    one_line_error(capsys, ["export", str(tmp_path / "no-run"), *extra], fragment)


def test_export_prompts_is_a_count(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["export", str(tmp_path), "--prompts", "nope.jsonl"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--prompts N is how many held-out prompts to verify on, not a file" in err


def test_export_help_says_prompts_is_a_number(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "--prompts N" in capsys.readouterr().out
