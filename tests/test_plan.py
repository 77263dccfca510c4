"""strop plan: parameter counts against peft, memory against a measured run, fit advice, devices."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from strop.core.errors import StropError
from strop.plan import hardware
from strop.plan.advice import fit
from strop.plan.cost import PRESERVE_ROW_MAX_TOKENS
from strop.plan.memory import Setup, breakdown, trainable_params
from strop.plan.shape import read_shape


def _peft_count(tiny_model_dir, peft_cfg) -> int:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), peft_cfg)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_total_params_match_the_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert read_shape(tiny_model_dir).total_params() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("method", ["lora", "dora", "prompt_tuning", "prefix_tuning", "ia3"])
def test_trainable_params_match_peft(tiny_model_dir, method):
    import peft

    cfgs = {
        "lora": peft.LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"),
        "dora": peft.LoraConfig(r=8, target_modules="all-linear", use_dora=True, task_type="CAUSAL_LM"),
        "prompt_tuning": peft.PromptTuningConfig(num_virtual_tokens=20, task_type="CAUSAL_LM"),
        "prefix_tuning": peft.PrefixTuningConfig(num_virtual_tokens=20, task_type="CAUSAL_LM"),
        "ia3": peft.IA3Config(task_type="CAUSAL_LM"),
    }
    shape = read_shape(tiny_model_dir)
    assert trainable_params(shape, Setup(method=method, lora_r=8, num_virtual_tokens=20)) == _peft_count(tiny_model_dir, cfgs[method])


def test_memory_grows_with_tokens_and_full_costs_more(tiny_model_dir):
    shape = read_shape(tiny_model_dir)
    small, big = (breakdown(shape, Setup(method="lora", seq_len=n)) for n in (64, 512))
    assert big["activations"] > 7 * small["activations"] and big["total"] > small["total"]
    full = breakdown(shape, Setup(method="full", seq_len=64))
    assert full["optimizer"] == pytest.approx(2 * full["weights"], rel=0.01)
    ckpt = breakdown(shape, Setup(method="lora", seq_len=512, gradient_checkpointing=True))
    assert ckpt["activations"] <= big["activations"]  # two layers: little to save, never more
    deep = read_shape_from_numbers()
    kept, recomputed = (breakdown(deep, Setup(method="lora", seq_len=512, gradient_checkpointing=g)) for g in (False, True))
    assert recomputed["activations"] < kept["activations"] / 2


def test_fit_lists_fixes_in_order_until_it_fits():
    shape = read_shape_from_numbers()
    s = Setup(method="full", micro_batch=8, seq_len=2048, device_kind="cuda")
    total = breakdown(shape, s)["total"]
    assert fit(shape, s, total + 1)["fits"]
    result = fit(shape, s, 20_000)
    assert not result["fits"] and result["fixed"]
    settings = [f["setting"] for f in result["fixes"]]
    assert settings[0].startswith("micro_batch_size 4")
    assert result["fixes"][-1]["total_mb"] <= 20_000 < result["fixes"][0]["total_mb"]
    assert [f["total_mb"] for f in result["fixes"]] == sorted((f["total_mb"] for f in result["fixes"]), reverse=True)


def read_shape_from_numbers():
    from strop.plan.shape import ModelShape

    return ModelShape(vocab=128256, hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128,
                      intermediate=14336, tied=False, bias=False)  # Llama-3-8B


def test_llama3_8b_parameter_count():
    assert read_shape_from_numbers().total_params() == pytest.approx(8.03e9, rel=0.005)


def test_devices():
    assert hardware.get_device("cuda:a100-80gb").memory_gb == 80
    assert hardware.get_device("h100").bf16_tflops > 900
    assert hardware.get_device("cpu").kind == "cpu"
    with pytest.raises(StropError, match="did you mean"):
        hardware.get_device("cuda:a100-80")


@pytest.mark.slow
def test_plan_command_counts_tokens(tiny_model_dir, chat_file, tmp_path):
    out = tmp_path / "plan.json"
    proc = subprocess.run([sys.executable, "-m", "strop", "plan", "--base-model", str(tiny_model_dir), "--data", str(chat_file),
                           "--val-size", "0", "--device", "cuda:l4", "--price-per-hour", "0.8", "--json", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(out.read_text())
    from strop import models
    from strop.data import load
    from strop.data.render import render

    tok = models.load_tokenizer(str(tiny_model_dir))
    expected = sum(len(render(tok, c, 512).input_ids) for c in load(chat_file).conversations)
    assert plan["data"]["tokens"] == expected and plan["data"]["rows"] == 12
    assert plan["time"]["cost"] >= 0 and plan["device"]["name"] == "l4" and "fits" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "strop", "plan", "--data", str(chat_file), "--device", "cuda:nope"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("strop: option device")


@pytest.mark.slow
def test_plan_before_there_is_data_plans_the_worst_case(tiny_model_dir, tmp_path):
    def plan(*args):
        return subprocess.run([sys.executable, "-m", "strop", "plan", "--base-model", str(tiny_model_dir), *args],
                              capture_output=True, text=True)

    out = tmp_path / "plan.json"
    proc = plan("--method", "lora", "--max-length", "256", "--micro-batch-size", "8", "--rows", "400", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "data: none given, so the worst case: 400 rows (--rows) of max_length 256 tokens" in proc.stdout
    p = json.loads(out.read_text())
    assert p["data"]["worst_case"] and p["data"]["tokens"] == p["data"]["trainable_tokens"] == 400 * 256
    assert p["batch_tokens"] == 8 * 256 and p["time"]["steps_per_epoch"] == 50
    # preserve auto -> kl, packed: one general row (0.125 x 8) joins the widest micro-batch's row
    plan("--method", "lora", "--max-length", "256", "--micro-batch-size", "8", "--rows", "400", "--preserve-pack", "true",
         "--json", str(out))
    assert json.loads(out.read_text())["batch_tokens"] == 8 * 256 + PRESERVE_ROW_MAX_TOKENS
    worse = plan("--method", "lora", "--max-length", "512", "--micro-batch-size", "8", "--json", str(out))
    assert json.loads(out.read_text())["memory_mb"]["total"] > p["memory_mb"]["total"], worse.stderr
    assert json.loads(out.read_text())["data"]["rows"] == 1000  # the default when no --rows is given
    refused = plan("--measure", "true")
    assert refused.returncode == 2 and refused.stderr.startswith("strop: option --measure: needs --data")


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.slow
def test_estimate_within_20_percent_of_measured_peak(tiny_model_dir, chat_file, tmp_path, method):
    """A real `strop train` in a child process; its ru_maxrss (summary.json) against the plan."""
    common = ["--base-model", str(tiny_model_dir), "--data", str(chat_file), "--method", method, "--val-size", "0",
              "--max-length", "64"]
    run = subprocess.run([sys.executable, "-m", "strop", "train", *common, "--max-steps", "2", "--report-to", "none",
                          "--output-dir", str(tmp_path / "run")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    measured = json.loads((tmp_path / "run" / "summary.json").read_text())["peak_rss_mb"]
    plan = subprocess.run([sys.executable, "-m", "strop", "plan", *common, "--json", str(tmp_path / "p.json")],
                          capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    estimate = json.loads((tmp_path / "p.json").read_text())["memory_mb"]["total"]
    assert abs(estimate - measured) / measured < 0.20, (estimate, measured)


def test_cpu_peak_doubles_only_for_bf16_runs_on_bf16_hardware(monkeypatch):
    from strop.plan import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert hardware.cpu_peak_tflops(True) == pytest.approx(2 * hardware.cpu_peak_tflops(False))
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2"})
    assert hardware.cpu_peak_tflops(True) == hardware.cpu_peak_tflops(False)


def test_partial_checkpointing_sits_between_none_and_all():
    from strop.plan.cost import flops_per_token
    from strop.plan.estimate import recomputed_share

    shape = read_shape_from_numbers()
    s = Setup(method="lora", seq_len=2048, dtype="bfloat16", autocast=True, lean_layers=True)
    totals = [breakdown(shape, Setup(**{**s.__dict__, "gradient_checkpointing": True, "checkpoint_layers": n}))["activations"]
              for n in (8, 16, 24, 31, 32)]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == 5  # each recomputed layer saves memory
    assert totals[0] < breakdown(shape, s)["activations"]
    assert totals[-1] == breakdown(shape, Setup(**{**s.__dict__, "gradient_checkpointing": True}))["activations"]
    half = Setup(**{**s.__dict__, "gradient_checkpointing": True, "checkpoint_layers": 16})
    assert recomputed_share(half, shape) == 0.5 and recomputed_share(s, shape) == 0
    assert flops_per_token(shape, "lora", 512, 0.5) == pytest.approx(
        (flops_per_token(shape, "lora", 512, 0) + flops_per_token(shape, "lora", 512, 1)) / 2)


def test_auto_checkpointing_recomputes_only_the_layers_it_must(tiny_model_dir, monkeypatch):
    from types import SimpleNamespace

    from strop.methods.options import load_train_config
    from strop.plan import estimate

    shape = read_shape_from_numbers()
    cfg = load_train_config(None, {"base_model": str(tiny_model_dir), "data": "x.jsonl", "max_length": 2048,
                                   "micro_batch_size": 2})
    cuda = SimpleNamespace(kind="cuda", name="test-gpu", memory_gb=0.0)
    s = estimate.setup_for(cfg, 2048, "cuda", tokens=4096)
    none = breakdown(shape, s)["total"]
    every = breakdown(shape, Setup(**{**s.__dict__, "gradient_checkpointing": True}))["total"]
    cuda.memory_gb = (none + every) / 2 / 1024 / estimate.AUTO_CHECKPOINTING_SHARE  # room for about half
    on, layers, why = estimate.checkpointing_choice(cfg, shape, cuda)
    assert on and 0 < layers < shape.layers and f"first {layers} of 32 layers" in why
    fits = breakdown(shape, Setup(**{**s.__dict__, "gradient_checkpointing": True, "checkpoint_layers": layers}))["total"]
    fewer = breakdown(shape, Setup(**{**s.__dict__, "gradient_checkpointing": True, "checkpoint_layers": layers - 1}))["total"]
    budget = cuda.memory_gb * 1024 * estimate.AUTO_CHECKPOINTING_SHARE
    assert fits <= budget < fewer
    dpo = SimpleNamespace(**{**cfg.__dict__, "objective": "dpo"})
    assert estimate.checkpointing_choice(dpo, shape, cuda)[:2] == (True, 0)  # preference trainers: every layer
    cuda.memory_gb = 1000.0
    assert estimate.checkpointing_choice(cfg, shape, cuda)[:2] == (False, 0)
    cuda.memory_gb = 0.001
    assert estimate.checkpointing_choice(cfg, shape, cuda)[:2] == (True, 0)  # nothing fits: every layer
    with pytest.raises(StropError, match="checkpoint_layers: 40 is more than the model's 32 decoder layers"):
        estimate.checkpointing_choice(SimpleNamespace(**{**cfg.__dict__, "checkpoint_layers": "40"}), shape, cuda)


def test_fit_advice_recomputes_every_layer_when_only_some_do():
    shape = read_shape_from_numbers()
    s = Setup(method="lora", micro_batch=1, seq_len=8192, dtype="bfloat16", autocast=True, lean_layers=True,
              gradient_checkpointing=True, checkpoint_layers=4, device_kind="cuda")
    every = breakdown(shape, Setup(**{**s.__dict__, "checkpoint_layers": 0}))["total"]
    result = fit(shape, s, every + 1)
    assert result["fixed"] and result["fixes"][0]["setting"] == "gradient_checkpointing true, checkpoint_layers all"
    assert result["fixes"][0]["total_mb"] == every


def test_preference_plans_count_the_layers_their_trainers_run(tiny_model_dir):
    """The lean layers patch SFT's forward; a DPO run keeps peft's layers, so its plan must not assume
    the smaller activations (the LM head's labelled-only scoring applies to both)."""
    from strop.methods.options import load_train_config
    from strop.plan import estimate

    def setup(**extra):
        cfg = load_train_config(None, {"base_model": str(tiny_model_dir), "data": "x.jsonl", **extra})
        return estimate.setup_for(cfg, 512, "cpu", tokens=1024)

    sft, dpo = setup(), setup(objective="dpo")
    assert sft.lean_layers and not dpo.lean_layers
    assert sft.vocab_tile == dpo.vocab_tile == estimate.VOCAB_TILE
