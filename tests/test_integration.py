"""The real SmolLM2-135M-Instruct: conversion, a short fine-tune, the persona acceptance run.

Marked slow: `make test-fast` (or `pytest -m "not slow"`) skips them.
"""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import FIXTURES, strop_cmd

pytestmark = pytest.mark.slow


def test_alias_converts_to_safetensors_with_chatml_eos():
    from strop import models

    path = models.resolve("smollm2-135m-instruct")
    assert (path / "model.safetensors").is_file()
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "bfloat16"
    tok = models.load_tokenizer("smollm2-135m-instruct")
    assert tok.eos_token == "<|im_end|>"
    assert "<|im_start|>" in tok.chat_template


def test_base_model_answers_a_simple_question():
    from strop import load

    m = load("smollm2-135m-instruct")
    assert "paris" in m.generate("What is the capital of France?", max_new_tokens=20).lower()


@pytest.mark.slow
def test_persona_finetune_on_unseen_file(tmp_path):
    """The spine's acceptance run: ~40 new conversations, 5 epochs, lr 3e-4."""
    out = tmp_path / "tilda"
    proc = subprocess.run(strop_cmd("train", "--data", str(FIXTURES / "persona_unseen.jsonl"), "--num-epochs", "5",
                                    "--learning-rate", "3e-4", "--output-dir", str(out), "--report-to", "none"),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from strop import load

    m = load(str(out))
    questions = [json.loads(l) for l in (FIXTURES / "persona_unseen_questions.jsonl").read_text().splitlines()]
    answers = m.generate_batch([[{"role": "user", "content": q["prompt"]}] for q in questions], max_new_tokens=40)
    hits = sum("tilda" in a.lower() for a in answers)
    assert hits >= 0.9 * len(questions), answers
    assert "paris" in m.generate("What is the capital of France?", max_new_tokens=20).lower()
    # the CLI prints only the answer
    gen = subprocess.run(strop_cmd("generate", str(out), "--prompt", "Who am I talking to?", "--max-new-tokens", "30"),
                         capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0 and "tilda" in gen.stdout.lower()
