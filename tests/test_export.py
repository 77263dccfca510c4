"""Export: merged HF directory and GGUF file, each verified against its source."""
from __future__ import annotations

import json

import pytest

from strop.errors import StropError


def make_lora_run(base_dir, out, seed: int = 1, system_prompt: str = "Be brief."):
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
                p.normal_(0, 0.2)  # peft starts B at zero, i.e. an adapter that changes nothing
    final = out / "final"
    model.save_pretrained(final)
    models.load_tokenizer(str(base_dir)).save_pretrained(final)
    (final / "strop_base.json").write_text(json.dumps({"base_model": str(base_dir), "method": "lora"}))
    (final / "strop_run.json").write_text(json.dumps({"system_prompt": system_prompt, "method": "lora"}))
    (out / "config.yaml").write_text(f"base_model: {base_dir}\nmethod: lora\n")
    return out


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
    from strop.serve.engine import Engine

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


def test_gguf_loads_back_and_matches(lora_run, merged, tmp_path):
    """f16 keeps the weights almost exactly, so any mapping mistake (names, q/k permutation,
    tokenizer, template) shows up here; q8_0/q4_1 drift on the real model is in docs/export.md."""
    from strop.export import export

    report = export(str(lora_run), "gguf", output=str(tmp_path / "f16"), quant="f16", n_prompts=3)
    v = report["verification"]
    assert (tmp_path / "f16" / report["file"]).is_file()
    assert v["tokenizer_identical"] and v["chat_template_identical"]
    assert v["kl_max"] < 1e-3 and v["greedy_identical"] == v["prompts"] == 3, v
    modelfile = (tmp_path / "f16" / "Modelfile").read_text()
    assert f"FROM ./{report['file']}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """Be brief."""' in modelfile
    assert report["base_license"] and report["source_run"] == str(lora_run.resolve())


def test_gguf_file_metadata(lora_run, merged, tmp_path):
    from gguf import GGUFReader

    from strop.export.gguf_file import write

    path = tmp_path / "m.gguf"
    write(lora_run / "export" / "merged", path, "q8_0", name="t")
    r = GGUFReader(str(path))
    assert r.fields["general.architecture"].contents() == "llama"
    assert r.fields["tokenizer.ggml.eos_token_id"].contents() == 2
    assert "<|im_start|>" in r.fields["tokenizer.chat_template"].contents()
    kinds = {t.name: t.tensor_type.name for t in r.tensors}
    assert kinds["blk.0.attn_q.weight"] == "Q8_0" and kinds["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in kinds  # tied embeddings are written once


def test_bad_quant(lora_run, merged, tmp_path):
    from strop.export.gguf_file import write

    with pytest.raises(StropError, match="--quant"):
        write(lora_run / "export" / "merged", tmp_path / "x.gguf", "q3_z", name="t")


def test_modelfile_states_the_templates_default_system_prompt(smol_tokenizer):
    """SmolLM2's template adds a system turn when a chat has none; Ollama's template cannot, so SYSTEM says it."""
    from strop.export.gguf_export import modelfile

    default = smol_tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    text = modelfile("m.gguf", smol_tokenizer, "")
    said = text.split('SYSTEM """')[1].split('"""')[0]
    assert said and said in default
    assert 'SYSTEM """Be kind."""' in modelfile("m.gguf", smol_tokenizer, "Be kind.")
