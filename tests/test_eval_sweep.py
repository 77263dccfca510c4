"""`strop eval RUN --scales`: the LoRA scale sweep from base to tuned, its choice, apply, and bad inputs."""
from __future__ import annotations

import json
import subprocess

import pytest
from conftest import strop_cmd, write_jsonl

from strop.core.errors import StropError
from strop.eval import sweep



@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    """A run directory whose final/ is a LoRA adapter with random (non-zero) B matrices on the tiny model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("sweeprun")
    run = root / "run"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                  init_lora_weights=False))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # a large update, so the scales differ measurably
    peft_model.save_pretrained(run / "final")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(run / "final")
    (run / "final" / "strop_run.json").write_text(json.dumps({"system_prompt": "", "method": "lora"}))
    rows = [{"messages": [{"role": "user", "content": f"Question {i}: who are you?"},
                          {"role": "assistant", "content": "I am Orrin."}], "keyword": "Orrin"} for i in range(6)]
    data = write_jsonl(root / "eval.jsonl", rows)
    (run / "config.yaml").write_text(f"base_model: {tiny_model_dir}\nmax_length: 128\ndata: {data}\nseed: 1\n")
    (run / "summary.json").write_text(json.dumps({"wall_s": 3.0}))
    return run, data


@pytest.fixture(scope="module")
def swept(lora_run):
    from strop.eval.run import evaluate

    run, data = lora_run
    return evaluate(str(run), str(data), max_new_tokens=4, resamples=100, scales=[0.5], forgetting_budget=0.05)


@pytest.mark.slow
def test_the_sweep_runs_from_the_base_to_the_tuned_model(swept, lora_run):
    s = swept["scale_sweep"]
    assert [p["scale"] for p in s["points"]] == [0.0, 0.5, 1.0]
    assert s["metric"] == "keyword_hit_rate"
    ppl = {p["scale"]: p["general_text_perplexity"] for p in s["points"]}
    assert ppl[0.0] == pytest.approx(swept["general_text"]["base"]["perplexity"])
    assert ppl[1.0] == pytest.approx(swept["general_text"]["tuned"]["perplexity"])
    assert ppl[1.0] != pytest.approx(ppl[0.0], rel=1e-3)  # the random update moves the model
    assert ppl[0.5] != pytest.approx(ppl[0.0], rel=1e-4) and ppl[0.5] != pytest.approx(ppl[1.0], rel=1e-4)
    assert (lora_run[0] / "eval" / "tradeoff.png").is_file()
    html = (lora_run[0] / "eval" / "report.html").read_text()
    assert "Task gain, forgetting and bias" in html and "Adapter scale sweep" in html


def test_the_choice_is_the_best_task_metric_within_the_budget():
    systems = {"base": {"keyword_hit_rate": 0.0}, "tuned": {"keyword_hit_rate": 0.9}}
    text = {"base": {"perplexity": 40.0}, "tuned": {"perplexity": 46.0}}  # +15%: over a 5% budget
    points = [{"scale": 0.5, "scores": {"keyword_hit_rate": 0.6}, "general_text_perplexity": 41.0},
              {"scale": 0.75, "scores": {"keyword_hit_rate": 0.8}, "general_text_perplexity": 41.9},
              {"scale": 0.9, "scores": {"keyword_hit_rate": 0.8}, "general_text_perplexity": 41.9}]
    out = sweep.summarise(points, systems, text, 0.05)
    assert out["chosen"] == 0.75  # 1.0 is over budget; 0.75 and 0.9 tie, the smaller wins
    assert [p["within_budget"] for p in out["points"]] == [True, True, True, True, False]
    assert sweep.summarise(points, systems, text, 0.01)["chosen"] is None  # +2.5% and more: nothing fits
    assert "within +1%" in sweep.summarise(points, systems, text, 0.01)["why"]


@pytest.mark.slow
def test_apply_writes_the_scale_into_the_adapter_and_starts_from_the_trained_value(swept, lora_run):
    from strop.eval.forgetting import general_paragraphs, general_text_nll
    from strop.eval.scores import nll_stats
    from strop.models.engine import Engine

    run, _ = lora_run
    sweep.apply_scale(run, 0.25)
    applied = sweep.apply_scale(run, 0.5)  # from the trained alpha, not from 0.25's
    assert applied == {"adapter_scale": 0.5, "lora_alpha": 4.0, "unscaled_lora_alpha": 8}
    engine = Engine(str(run))  # a fresh load sees the scale through peft's own config
    nll, tokens = general_text_nll(engine.model, engine.tok, general_paragraphs(), 128)
    at_half = next(p for p in swept["scale_sweep"]["points"] if p["scale"] == 0.5)
    assert nll_stats(nll, tokens)["perplexity"].value() == pytest.approx(at_half["general_text_perplexity"], rel=1e-5)
    sweep.apply_scale(run, 1.0)
    assert json.loads((run / "final" / "adapter_config.json").read_text())["lora_alpha"] == 8


@pytest.mark.parametrize("text", ["0,0.5", "1", "1.5", "half", ""])
def test_bad_scale_lists_are_one_line_errors(text):
    with pytest.raises(StropError, match="--scales"):
        sweep.parse_scales(text)


@pytest.mark.slow
def test_a_run_without_a_lora_adapter_is_refused_before_any_model_loads(tmp_path, tiny_model_dir, lora_run):
    from strop.eval.run import evaluate

    run = tmp_path / "full"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    with pytest.raises(StropError, match="no LoRA adapter"):
        sweep.check_sweepable(run)
    with pytest.raises(StropError, match="--apply-scale: needs --scales"):
        evaluate(str(lora_run[0]), str(lora_run[1]), apply_scale=True)
    dora = json.loads((lora_run[0] / "final" / "adapter_config.json").read_text()) | {"use_dora": True}
    (run / "final" / "adapter_config.json").write_text(json.dumps(dora))
    with pytest.raises(StropError, match="DoRA"):
        sweep.check_sweepable(run)


@pytest.mark.slow
def test_cli_names_the_option(lora_run):
    run, data = lora_run
    proc = subprocess.run(strop_cmd("eval", str(run), "--data", str(data), "--scales", "2"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("strop: --scales:"), proc.stderr
    assert "Traceback" not in proc.stderr
