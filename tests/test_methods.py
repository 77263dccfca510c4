"""The method matrix: every entry of methods.METHODS on the tiny model.

Each method trains with falling loss, saves only what it trains (+ tokenizer),
reloads to identical logits and generates through ``strop.load``; mergeable
methods merge with merged-vs-unmerged logits checked. Run with ``-m methods``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from strop import methods, models
from strop.methods.options import load_train_config
from strop.core.errors import StropError
from strop.core.rundir import RunDir
from strop.train.run import train
from strop.train.save import save_final

pytestmark = pytest.mark.methods
ROOT = Path(__file__).resolve().parents[1]
ALL = list(methods.METHODS)
# Soft prompts and rescaling vectors need far larger steps than weight-space methods.
LR = {"full": 1e-3, "ia3": 5e-2, "prompt_tuning": 1e-1, "prefix_tuning": 1e-1}
SMALL = {"num_virtual_tokens": 8}
PROMPT_LEARNING = ("prompt_tuning", "prefix_tuning")  # keeps prompt/prefix tuning fast on the tiny model


def _cfg(tiny_model_dir, chat_file, out, method, **kw):
    values = {"base_model": str(tiny_model_dir), "data": str(chat_file), "output_dir": str(out), "method": method,
              "report_to": "none", "micro_batch_size": 4, "logging_steps": 1, "val_size": 0,
              "learning_rate": LR.get(method, 1e-2), "lr_scheduler_type": "constant", "warmup_ratio": 0}
    values.update({k: v for k, v in SMALL.items() if k in methods.get(method).options})
    values.update(kw)
    return load_train_config(None, values)


def _numel(final: Path) -> int:
    from safetensors.torch import load_file

    files = [p for p in final.iterdir() if p.suffix == ".safetensors"]
    assert len(files) == 1, files
    return sum(t.numel() for t in load_file(files[0]).values())


@pytest.mark.parametrize("method", ALL)
@pytest.mark.slow
def test_method_trains_saves_only_trained_weights_and_generates(tiny_model_dir, chat_file, tmp_path, method):
    run = train(_cfg(tiny_model_dir, chat_file, tmp_path / "run", method, max_steps=20), progress=False)
    losses = [r["loss"] for r in run.read_metrics() if "loss" in r]
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    # On a random tiny model a few virtual tokens can only shift the output distribution a little.
    assert last < first * (0.97 if method in PROMPT_LEARNING else 0.9), (method, first, last)

    summary = json.loads(run.summary.read_text())
    assert 0 < summary["trainable_params"] <= summary["total_params"]
    assert summary["trainable_percent"] == pytest.approx(100 * summary["trainable_params"] / summary["total_params"], abs=1e-3)
    assert summary["peak_rss_mb"] > 0 and summary["tokens_per_s"] > 0
    # final/ holds exactly the trained tensors: the parameter count on disk is the trainable count.
    saved = _numel(run.final)
    if method == "full":
        assert saved == summary["total_params"]
    else:
        assert saved == summary["trainable_params"] < summary["total_params"] / 10
    assert (run.final / "tokenizer_config.json").is_file()

    from strop import load

    answer = load(str(run.root)).chat([{"role": "user", "content": "What is 3 plus 3?"}], max_new_tokens=6)
    assert answer.completion_tokens >= 1


def _saved_run(tiny_model_dir, chat_file, tmp_path, method):
    """Wrap, perturb the trainable weights (LoRA B and adapter up start at zero), save like a run."""
    cfg = _cfg(tiny_model_dir, chat_file, tmp_path / "run", method)
    model = methods.get(method).wrap(
        models.load_model(str(tiny_model_dir), load_in_4bit=methods.get(method).load_in_4bit), cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.config.write_text(f"method: {method}\n")
    save_final(model, models.load_tokenizer(str(tiny_model_dir)), cfg, run)
    return model, run


IDS = torch.tensor([[1, 50, 300, 7000, 12, 9]])


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("method", ALL)
def test_method_reloads_to_identical_logits(tiny_model_dir, chat_file, tmp_path, method):
    model, run = _saved_run(tiny_model_dir, chat_file, tmp_path, method)
    loaded, _ = models.load(str(run.root))
    base = models.load_model(str(tiny_model_dir))
    assert torch.equal(_logits(model), _logits(loaded))
    # The perturbation must show, or equality above would prove nothing.
    assert not torch.allclose(_logits(loaded)[:, -IDS.shape[1]:], _logits(base), atol=1e-4)


@pytest.mark.parametrize("method", [m for m in ALL if methods.get(m).mergeable])
def test_merge_agrees_with_unmerged(tiny_model_dir, chat_file, tmp_path, method):
    from peft import PeftModel

    from strop.export.merged import merge

    _, run = _saved_run(tiny_model_dir, chat_file, tmp_path, method)
    merged, diff = merge(str(run.root))
    assert not isinstance(merged, PeftModel)
    assert not any("lora_" in n or "ia3_" in n for n, _ in merged.named_parameters())
    assert diff < 1e-4, diff


@pytest.mark.parametrize("method", [m for m in ALL if not methods.get(m).mergeable])
def test_unmergeable_methods_say_so(tiny_model_dir, chat_file, tmp_path, method):
    from strop.export.merged import merge

    _, run = _saved_run(tiny_model_dir, chat_file, tmp_path, method)
    with pytest.raises(StropError, match=f"--method {method} cannot be merged"):
        merge(str(run.root))


@pytest.mark.parametrize("method, option, value", [
    ("ia3", "lora_r", "8"),
    ("lora", "num_virtual_tokens", "10"),
    ("full", "adapter_reduction_factor", "4"),
    ("prompt_tuning", "ia3_target_modules", "k_proj"),
    ("prefix_tuning", "prompt_tuning_init_text", "hello"),
])
def test_option_for_another_method_is_an_error(method, option, value):
    with pytest.raises(StropError, match=f"option {option} does not apply to --method {method}"):
        load_train_config(None, {"method": method, option: value})


def test_bad_adapter_placement_is_an_error():
    with pytest.raises(StropError, match="adapter_placement: 'middle' is not one of houlsby, pfeiffer"):
        load_train_config(None, {"method": "adapter", "adapter_placement": "middle"})


def test_missing_ia3_target_module_names_option(tiny_model_dir, chat_file, tmp_path):
    cfg = _cfg(tiny_model_dir, chat_file, tmp_path / "run", "ia3", ia3_target_modules="k_proj,qkv")
    with pytest.raises(StropError, match="option ia3_target_modules: qkv not found"):
        methods.get("ia3").wrap(models.load_model(str(tiny_model_dir)), cfg)


def test_pfeiffer_places_half_the_adapters_of_houlsby(tiny_model_dir):
    from strop.methods import bottleneck

    counts = {}
    for placement in ("houlsby", "pfeiffer"):
        model = bottleneck.attach(models.load_model(str(tiny_model_dir)), 4, placement)
        counts[placement] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert torch.equal(_logits(model), _logits(models.load_model(str(tiny_model_dir))))  # identity at start
    assert counts["houlsby"] == 2 * counts["pfeiffer"] > 0


def test_every_method_has_an_example_config():
    shipped = {}
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        cfg = load_train_config(str(path), {})
        shipped.setdefault(cfg.method, path)
    assert set(ALL) <= set(shipped), set(ALL) - set(shipped)


@pytest.mark.slow
def test_compare_tabulates_each_method(tiny_model_dir, chat_file, tmp_path):
    from strop.compare import compare

    result = compare(str(chat_file), ["lora", "adapter"], str(tmp_path / "cmp"), base_model=str(tiny_model_dir),
                     max_steps=2, val_size=3)
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"base (untrained)", "lora", "adapter"}
    for name in ("lora", "adapter"):
        assert rows[name]["heldout_loss"] > 0 and rows[name]["adapter_mb"] > 0
        assert rows[name]["trainable_params"] > 0 and rows[name]["peak_rss_mb"] > 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| lora |" in table and "| adapter |" in table
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0
    held = (tmp_path / "cmp" / "split" / "heldout.jsonl").read_text().splitlines()
    assert len(held) == 3
