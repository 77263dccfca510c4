"""GGUF files from `strop export`'s converter, checked by llama.cpp itself (llama-cpp-python).

Not part of `make test`: llama-cpp-python builds llama.cpp from source (about
12 minutes on 2 cores). `make test-interop` installs it and runs this file.

For every family, a tiny random model from its transformers config (the same
configs as tests/models/test_architectures.py) with a tokenizer the converter
accepts for that family, converted at f16 by strop's converter and loaded by
llama.cpp. Most families take the default model's tokenizer. Qwen 2 takes the
real Qwen 2 vocabulary (llama.cpp's own ``models/ggml-vocab-qwen2.gguf`` test
file, from the llama-cpp-python source package that `make test-interop`
fetches; the converter recognises Qwen 2's pre-tokenizer by a hash of its
output, and transformers gives any tokenizer in a qwen2 directory Qwen 2's
pre-tokenizer, so no borrowed vocabulary can pass). Gemma 2's converter reads
the family's SentencePiece ``tokenizer.model``, which no package ships, so the
test trains a small one with Gemma's layout (``gemma_tokenizer``). Phi-3 takes the default
model's byte-level BPE declared as ``GPT2Tokenizer``, the layout Phi-4 ships
(Phi3ForCausalLM with a GPT-2-style tokenizer). For each:

* 31 varied strings tokenize to the same ids as transformers;
* the chat template in the file is the model's own, and renders the same prompt;
* greedy output equals transformers' greedy output token for token;
* the next-token distributions agree (KL below 1e-4; a tiny random model's
  greedy text can be one token repeated, which would prove little alone).

Plus the default model (SmolLM2-135M-Instruct) at f16 and q8_0.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="make test-interop installs llama-cpp-python")
pytestmark = pytest.mark.interop

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gemma_vocab import gemma_tokenizer, phi3_tokenizer  # noqa: E402
from test_architectures import ARCHITECTURES, base_with_tokenizer  # noqa: E402

STRINGS = [
    "Hello, world!", "What is the capital of France?", "  two leading spaces", "tabs\tand\nnewlines\n\n",
    "émigré café naïve façade", "日本語のテキストです。", "emoji 🎉🚀 and ✓", "numbers 1234567890 and 3.14159",
    "code: def f(x): return x**2", "<|im_start|>user\nhi<|im_end|>", "URL https://example.org/a?b=c&d=e",
    "UPPER lower MiXeD", "don't can't won't", "a-b_c.d/e\\f", "   ", "Ünïcödé Ωμέγα Привет", "x" * 40,
    "email: someone@example.com", "price: $19.99 (20% off)", "#hashtag @mention", "line1\r\nline2",
    "a\u00a0non-breaking space", "العربية نص", "한국어 텍스트", "math: ∑ x_i ≤ ∞", "quotes “curly” and 'straight'",
    "JSON {\"k\": [1, 2, 3]}", "end with space ", "1,000,000 and 1.000.000", "<think>\nreasoning\n</think>",
    "<start_of_turn>user\nhi<end_of_turn>",
]
PROMPTS = ["What is the capital of France?", "Tell me a short story about a fox.", "Hi!"]
# families whose converter reads a SentencePiece tokenizer.model: no package ships one, so the test trains one
SENTENCEPIECE = {"gemma2": gemma_tokenizer, "phi3-sentencepiece": phi3_tokenizer}
# every family, and Phi-3 twice: with Phi-3 mini's SentencePiece tokenizer and with Phi-4's GPT-2-style one
CASES = list(ARCHITECTURES) + ["phi3-sentencepiece"]
# llama.cpp's tokenizer test vocabularies, taken from the llama-cpp-python source package by `make test-interop`
VOCAB_DIR = Path(__file__).resolve().parents[2] / "build" / "llama-vocab"


def family_tokenizer(kind: str, smol_tokenizer, out: Path | None = None):
    """The tokenizer a tiny ``kind`` model is converted with (module docstring says why)."""
    if kind in SENTENCEPIECE:
        return SENTENCEPIECE[kind](out / "sentencepiece")
    if kind == "qwen2":
        from transformers import AutoTokenizer

        if not (VOCAB_DIR / "ggml-vocab-qwen2.gguf").is_file():
            pytest.skip(f"qwen2: {VOCAB_DIR}/ggml-vocab-qwen2.gguf missing; `make test-interop` fetches it")
        return AutoTokenizer.from_pretrained(VOCAB_DIR, gguf_file="ggml-vocab-qwen2.gguf")
    return smol_tokenizer


def with_family_tokenizer(kind: str, smol_tokenizer, out: Path) -> Path:
    """base_with_tokenizer for the case ``kind`` (a family, or "phi3-sentencepiece"), plus Phi-4's tokenizer
    class for phi3."""
    import json

    tok = family_tokenizer(kind, smol_tokenizer, out)
    base_with_tokenizer(kind.split("-")[0], tok, out)
    if kind in SENTENCEPIECE:  # as strop saves runs: the SentencePiece model and which pieces are special
        from strop import models

        models.save_tokenizer(tok, out)
    if kind == "phi3":
        config = out / "tokenizer_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "tokenizer_class": "GPT2Tokenizer"}))
    return out


def _greedy_llama(llm, ids: list[int], n: int, eos: int) -> list[int]:
    llm.reset()
    out = []
    for t in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0):
        out.append(t)
        if len(out) == n or t == eos:
            break
    return out


def _greedy_hf(model, ids: list[int], n: int) -> list[int]:
    import torch

    with torch.no_grad():
        return model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)[0, len(ids):].tolist()


def _prompt_ids(tok, text: str) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True,
                                  return_dict=False)
    return ids["input_ids"] if isinstance(ids, dict) else list(ids)


def _check(path: Path, tok, model, n_new: int = 12) -> dict:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, verbose=False, logits_all=True)
    tokenized = [s for s in STRINGS if llm.tokenize(s.encode(), add_bos=False, special=True)
                 != tok.encode(s, add_special_tokens=False)]
    template = llm.metadata.get("tokenizer.chat_template")
    messages = [{"role": "user", "content": "Hi"}]
    rendered = ImmutableSandboxedEnvironment().from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")
    greedy = [p for p in PROMPTS if _greedy_llama(llm, _prompt_ids(tok, p), n_new, tok.eos_token_id)
              != _greedy_hf(model, _prompt_ids(tok, p), n_new)]
    return {"tokenizer_mismatches": tokenized, "template_same": template == tok.chat_template,
            "rendered_same": rendered == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
            "greedy_mismatches": greedy, "next_token_kl": max(_next_token_kl(llm, model, _prompt_ids(tok, p))
                                                              for p in PROMPTS)}


def _next_token_kl(llm, model, ids: list[int]) -> float:
    """KL(transformers || llama.cpp) of the next-token distribution after ``ids``: a tiny random model's greedy
    text can be one token repeated, so the whole distribution is compared as well."""
    import numpy as np
    import torch

    llm.reset()
    llm.eval(ids)
    theirs = torch.log_softmax(torch.tensor(np.array(llm.scores[llm.n_tokens - 1]), dtype=torch.float32), -1)
    with torch.no_grad():
        ours = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
    return float((ours.exp() * (ours - theirs)).sum())


@pytest.mark.parametrize("kind", CASES)
def test_each_family_converts_and_llama_cpp_agrees(kind, smol_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from strop.export.converter import convert

    with_family_tokenizer(kind, smol_tokenizer, tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path).float().eval()
    # not named after the family: llama.cpp takes a file whose name holds "phi3" for Microsoft's Phi-3 and
    # looks up Phi-3's "<|end|>" token, which this borrowed vocabulary lacks (the load fails)
    convert(tmp_path, tmp_path / "m.gguf", "f16", name="tiny")
    result = _check(tmp_path / "m.gguf", tok, model)
    assert result.pop("next_token_kl") < 1e-4, (kind, result)  # about 1e-6 in f16 for every family
    assert result == {"tokenizer_mismatches": [], "template_same": True, "rendered_same": True,
                      "greedy_mismatches": []}, (kind, result)


@pytest.mark.slow
@pytest.mark.parametrize("quant,need", [("f16", 3), ("q8_0", 2)])
def test_default_model_in_llama_cpp(quant, need, tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from strop import models
    from strop.export.converter import convert

    src = Path(models.resolve("smollm2-135m-instruct"))
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    out = tmp_path_factory.mktemp("default") / f"smollm2-{quant}.gguf"
    convert(src, out, quant, name="smollm2")
    result = _check(out, tok, model, n_new=24)
    assert result["tokenizer_mismatches"] == [] and result["template_same"] and result["rendered_same"], result
    assert len(PROMPTS) - len(result["greedy_mismatches"]) >= need, result


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["q4_k_m", "q5_k_m", "q6_k"])
def test_k_quants_are_made_by_llama_cpp_and_load_there(quant, tmp_path):
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from strop import models
    from strop.export.converter import convert

    src = Path(models.resolve("smollm2-135m-instruct"))
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    out = tmp_path / f"smollm2-{quant}.gguf"
    convert(src, out, quant, name="smollm2")
    kind = gguf.GGUFReader(out).fields["general.file_type"].contents()
    assert kind == getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + quant.upper())
    result = _check(out, tok, model, n_new=6)
    assert result["tokenizer_mismatches"] == [] and result["template_same"] and result["rendered_same"], result
    # this base was converted from a Q4_1 file: a k-quant re-rounds weights already on a 4-bit grid, so greedy
    # answers drift sooner than q4_1's (docs/export.md); a broken file would agree on none
    assert len(PROMPTS) - len(result["greedy_mismatches"]) >= 1, result


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3-sentencepiece", "mixtral"])
def test_strop_export_verifies_with_llama_cpp(kind, smol_tokenizer, tmp_path):
    """`strop export --format gguf` checks the file with llama.cpp when it is installed, so a family that
    transformers' GGUF reader misreads (Gemma 3, Mixtral) is verified by the runtime that will run it.
    Qwen 2 runs with its own vocabulary and its own chat template (a default system prompt), Gemma 2 with a
    SentencePiece vocabulary and a template without a system role."""
    import json

    from strop.export import export
    from test_export import make_lora_run

    base = with_family_tokenizer(kind, smol_tokenizer, tmp_path / "base")
    run = make_lora_run(base, tmp_path / "run", b_std=0.2)
    report = export(str(run), "gguf", output=str(tmp_path / "gguf"), quant="f16", n_prompts=4)
    v = json.loads((tmp_path / "gguf" / "strop_export.json").read_text())["verification"]
    assert v["checked_by"].startswith("llama.cpp") and v["verified"], json.dumps(v)
    assert v["tokenizer_identical"] and v["chat_template_identical"], v
    assert v["greedy_identical"] >= 3 and v["kl_mean"] < 1e-3 < v["kl_to_base_mean"], v
    assert report["file"] == "run-f16.gguf"


def _strop(*args: str):
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "strop", *args], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (args[0], proc.stderr[-2000:])
    return proc


def test_a_qwen2_run_trained_by_strop_answers_the_same_in_llama_cpp(smol_tokenizer, chat_file, tmp_path):
    """End to end on a Qwen 2 base with its own vocabulary and chat template (which adds a default system
    prompt): `strop train`, `strop export --format gguf`, then llama.cpp's greedy answer is `strop generate`'s."""
    import json

    from strop import models

    base = with_family_tokenizer("qwen2", smol_tokenizer, tmp_path / "base")
    run = tmp_path / "run"
    _strop("train", "--base-model", str(base), "--data", str(chat_file), "--output-dir", str(run), "--max-steps", "8",
           "--learning-rate", "5e-3", "--report-to", "none", "--val-size", "0")
    _strop("export", str(run), "--format", "gguf", "--quant", "f16", "--output", str(tmp_path / "gguf"))
    verification = json.loads((tmp_path / "gguf" / "strop_export.json").read_text())["verification"]
    assert verification["checked_by"].startswith("llama.cpp") and verification["verified"], verification
    tok = models.load_tokenizer(str(run / "final"))
    llm = llama_cpp.Llama(model_path=str(tmp_path / "gguf" / "run-f16.gguf"), n_ctx=512, verbose=False)
    for question in ("What is 3 plus 3?", "What is the capital of France?"):
        ours = _strop("generate", str(run), "--prompt", question, "--max-new-tokens", "12").stdout.strip()
        ids = _greedy_llama(llm, _prompt_ids(tok, question), 12, tok.eos_token_id)
        theirs = tok.decode(ids, skip_special_tokens=True).strip()
        assert theirs == ours, (question, theirs, ours)
    assert "You are a helpful assistant" in tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
