"""Config parsing: YAML + overrides, types, unknown keys with suggestions."""
from __future__ import annotations

import pytest

from strop.core.config import TrainConfig, parse_overrides
from strop.methods.options import load_train_config
from strop.core.errors import StropError


def test_overrides_are_typed(tmp_path):
    cfg = load_train_config(None, parse_overrides(
        ["--num-epochs", "5", "--learning-rate", "3e-4", "--lora-target-modules", "q_proj,v_proj", "--train-on-inputs"]))
    assert cfg.num_epochs == 5.0 and cfg.learning_rate == 3e-4
    assert cfg.lora_target_modules == ["q_proj", "v_proj"]
    assert cfg.train_on_inputs is True


def test_yaml_then_cli_wins(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 0.001\nlora_r: 4\nmethod: dora\n")
    cfg = load_train_config(str(path), {"lora_r": "8"})
    assert (cfg.learning_rate, cfg.lora_r, cfg.method) == (0.001, 8, "dora")


def test_unknown_yaml_key_suggests(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learnin_rate: 0.1\n")
    with pytest.raises(StropError, match=r"c.yaml: unknown key 'learnin_rate'; did you mean learning_rate"):
        load_train_config(str(path), {})


def test_unknown_option_suggests():
    with pytest.raises(StropError, match=r"unknown option --num-epoch; did you mean --num-epochs"):
        load_train_config(None, parse_overrides(["--num-epoch", "3"]))


@pytest.mark.parametrize("key, value, message", [
    ("micro_batch_size", "0", "micro_batch_size: must be at least 1"),
    ("learning_rate", "2", "learning_rate: 2.0 is outside"),
    ("method", "lorra", "did you mean lora"),
    ("lora_r", "1.5", "lora_r: cannot use"),
    ("report_to", "comet", "unknown report_to"),
])
def test_bad_values(key, value, message):
    with pytest.raises(StropError, match=message):
        load_train_config(None, {key: value})


def test_bad_yaml_names_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lora_r: 8\nlearning_rate: [1,\n")
    with pytest.raises(StropError, match=r"c.yaml:\d+: invalid YAML"):
        load_train_config(str(path), {})


def test_examples_parse():
    from pathlib import Path

    examples = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))
    assert examples, "no example configs shipped"
    for path in examples:
        assert isinstance(load_train_config(str(path), {}), TrainConfig)


def test_every_key_belongs_to_one_group_and_yaml_stays_flat(tmp_path):
    import dataclasses

    import yaml

    from strop.core.config import GROUPS, to_yaml

    grouped = [f.name for g in GROUPS for f in dataclasses.fields(g)]
    assert len(grouped) == len(set(grouped))
    assert sorted(grouped) == sorted(f.name for f in dataclasses.fields(TrainConfig))
    cfg = load_train_config(None, {"lora_r": "8", "learning_rate": "1e-4", "preserve": "none"})
    written = yaml.safe_load(to_yaml(cfg))
    assert written["lora_r"] == 8 and written["preserve"] == "none" and set(written) == set(grouped)
    path = tmp_path / "again.yaml"
    path.write_text(to_yaml(cfg))
    assert load_train_config(str(path), {}) == cfg

