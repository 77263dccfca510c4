"""The speed path on every model family people fine-tune, not only the tiny Llama.

For each architecture, a tiny random model from its transformers config
(2 layers, hidden 64): strop's lean layers (patches/fused.py) and per-example
attention (patches/varlen.py) must give the loss and every gradient of the
plain transformers + peft path to 1e-5 in float32, or switch themselves off
for that architecture. A lever that silently computes something else on one
family is the failure this file exists to catch.
"""
from __future__ import annotations

import pytest
import torch

from strop.patches import varlen
from strop.patches.fused import lean_layers
from strop.patches.varlen import per_example_attention

VOCAB = 101
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, head_dim=16)
ARCHITECTURES = {
    "llama": {},
    "qwen2": {},
    "qwen3": {},
    "mistral": {"sliding_window": None},
    "gemma2": {"query_pre_attn_scalar": 16},
    "gemma3_text": {"query_pre_attn_scalar": 16},
    "phi3": {"pad_token_id": 0, "original_max_position_embeddings": 256},  # not above max_position_embeddings
    "olmo2": {},
    "granite": {},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 1, "norm_topk_prob": True},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
}


def _model(kind: str, lora: bool = True, **extra):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(kind, **COMMON, **{**ARCHITECTURES[kind], **extra})
    model = AutoModelForCausalLM.from_config(cfg).float()  # its default attention: sdpa where it has one
    if lora:  # random B, so every LoRA gradient is non-zero from the first step
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 lora_dropout=0.0, init_lora_weights=False))
    model.train()
    return model


def _loss_and_grads(model, batch: dict, lean: bool = False):
    model.zero_grad()
    with lean_layers(model, lean):
        loss = model(**batch, use_cache=False).loss  # as training calls it (TRL): no KV cache
        loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=0, atol=1e-5, msg=name)


def _rows(n: int = 3) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    rows = []
    for length in (11, 17, 8)[:n]:
        ids = torch.randint(1, VOCAB, (length,), generator=gen).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:]})  # a prompt, then the answer trained on
    return rows


@pytest.mark.parametrize("kind", list(ARCHITECTURES))
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_lean_layers_give_the_plain_loss_and_gradients(kind, lora):
    model = _model(kind, lora)
    ids = torch.randint(0, VOCAB, (2, 13), generator=torch.Generator().manual_seed(2))
    batch = {"input_ids": ids, "labels": ids}
    plain = _loss_and_grads(model, batch)
    with lean_layers(model) as patched:
        pass
    lean = _loss_and_grads(model, batch, lean=True)
    _assert_same(plain, lean)
    if lora:  # every LoRA linear takes the lean path on every family: the lever is on, not skipped
        assert patched >= 2 * 7 or kind in ("qwen3_moe", "mixtral", "phi3"), patched


# (id, model type, config overrides): every family, plus sliding windows shorter than the examples
ATTENTION_CASES = [(kind, kind, {}) for kind in ARCHITECTURES] + [
    ("mistral-window-6", "mistral", {"sliding_window": 6}),
    ("gemma3-window-6", "gemma3_text", {"sliding_window": 6}),
    ("qwen2-window-6", "qwen2", {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 0}),
]
# Gemma 2 caps its attention logits, which SDPA cannot do: transformers runs it eagerly, so there is
# nothing to cut; its own mask keeps the examples apart (test below)
OFF_BY_DESIGN = {"gemma2"}


@pytest.mark.parametrize("name,kind,extra", ATTENTION_CASES, ids=[c[0] for c in ATTENTION_CASES])
def test_per_example_attention_matches_the_padded_batch_or_stays_off(name, kind, extra, monkeypatch):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = _rows()
    padded = DataCollatorForLanguageModeling(pad_token_id=0)(rows)
    flat = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    model = _model(kind, **extra)
    plain = _loss_and_grads(model, {k: padded[k] for k in ("input_ids", "attention_mask", "labels")})
    for kernel in ("always", "never"):  # the written-out attention CPU bf16 runs use, and SDPA per example
        monkeypatch.setattr(varlen, "CPU_MATMUL", kernel)
        with per_example_attention(model) as active:
            packed = _loss_and_grads(model, {k: flat[k] for k in ("input_ids", "position_ids", "labels")})
        if not active:
            assert kind in OFF_BY_DESIGN, f"per-example attention switched itself off for {name}"
            return
        _assert_same(plain, packed)
    assert kind not in OFF_BY_DESIGN


def test_a_packed_row_without_the_cut_is_exact_too():
    """transformers separates a packed row's examples itself (from position_ids, with no KV cache), also
    for eager attention and sliding windows: with --per-example-attention false, or on Gemma 2, training
    still sees each example alone; the cut only saves the masked square's work."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = _rows()
    padded = DataCollatorForLanguageModeling(pad_token_id=0)(rows)
    flat = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    for kind, extra in (("llama", {}), ("gemma2", {}), ("mistral", {"sliding_window": 6})):
        model = _model(kind, **extra)
        plain = _loss_and_grads(model, {k: padded[k] for k in ("input_ids", "attention_mask", "labels")})
        packed = _loss_and_grads(model, {k: flat[k] for k in ("input_ids", "position_ids", "labels")})
        _assert_same(plain, packed)


def base_with_tokenizer(kind: str, tok, out):
    """A tiny random model of ``kind`` with the default model's tokenizer, saved as a normal HF directory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    extra = {k: v for k, v in ARCHITECTURES[kind].items() if k != "pad_token_id"}
    cfg = AutoConfig.for_model(kind, **{**COMMON, "vocab_size": len(tok), "initializer_range": 0.1,
                                        "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                                        "pad_token_id": tok.pad_token_id}, **extra)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(ARCHITECTURES))
def test_lora_run_reloads_generates_and_merges_the_same(kind, smol_tokenizer, tmp_path):
    """Save -> reload through strop's own loading -> greedy output; then `strop export --format merged`
    (merge, save, reload, verified against the adapter) gives the very same greedy output."""
    import sys
    from pathlib import Path

    from strop.export import export
    from strop.models.engine import Engine

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_export import make_lora_run

    run = make_lora_run(base_with_tokenizer(kind, smol_tokenizer, tmp_path / "base"), tmp_path / "run",
                        system_prompt="", b_std=0.2)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    tuned = Engine(str(run)).chat(question, max_new_tokens=12).text
    report = export(str(run), "merged", output=str(tmp_path / "merged"), n_prompts=2, dtype="float32")
    assert report["verification"]["verified"] and report["verification"]["greedy_identical"] == 2, report
    assert Engine(str(tmp_path / "merged")).chat(question, max_new_tokens=12).text == tuned
    # the adapter changes the base's answers, so the equalities above mean something
    assert report["verification"]["tuned_vs_base_greedy_identical"] < 2, report["verification"]


def test_a_sentencepiece_tokenizer_keeps_its_model_and_special_pieces_when_strop_saves_it(tmp_path):
    """transformers 5 saves tokenizer.json only; llama.cpp's converter needs a SentencePiece family's
    tokenizer.model and learns which pieces are special from tokenizer_config.json. A run or merged export
    saved by strop keeps both, and reloads to the same ids."""
    import json
    import sys
    from pathlib import Path

    from transformers import AutoTokenizer

    from strop import models

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gemma_vocab import gemma_tokenizer

    tok = gemma_tokenizer(tmp_path / "source")
    tok.save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain" / "tokenizer.model").exists()  # what the helper exists for
    models.save_tokenizer(tok, tmp_path / "run")
    saved = tmp_path / "run"
    assert (saved / "tokenizer.model").read_bytes() == (tmp_path / "source" / "tokenizer.model").read_bytes()
    special = {v["content"]: v["special"]
               for v in json.loads((saved / "tokenizer_config.json").read_text())["added_tokens_decoder"].values()}
    assert special["<start_of_turn>"] and special["<end_of_turn>"] and special["<bos>"], special
    again = AutoTokenizer.from_pretrained(saved)
    text = "<start_of_turn>user\nnaïve café 42<end_of_turn>\n"
    assert again.encode(text) == tok.encode(text) and tok.convert_tokens_to_ids("<start_of_turn>") in tok.encode(text)
    models.save_tokenizer(again, tmp_path / "twice")  # a run of a run (merged export of a run)
    assert (tmp_path / "twice" / "tokenizer.model").is_file()


def test_a_tokenizer_is_loaded_as_its_tokenizer_json_says_wherever_it_lies(tmp_path):
    """transformers 5 rebuilds a Llama-class tokenizer's pipeline when no config.json lies beside it (a run's
    final/): a Phi-3 tokenizer then drops the space SentencePiece puts before a text after a special token
    and before a leading space. strop loads it as its tokenizer.json describes, which is SentencePiece's own
    tokenization, the one llama.cpp reproduces."""
    import sys
    from pathlib import Path

    import sentencepiece as spm
    from transformers import AutoTokenizer

    from strop import models

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gemma_vocab import phi3_tokenizer

    tok = phi3_tokenizer(tmp_path / "source")
    tok.save_pretrained(tmp_path / "final")  # tokenizer files only, as in a run
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "source" / "tokenizer.model"))
    user = tok.convert_tokens_to_ids("<|user|>")
    cases = {"  two leading spaces": sp.encode("  two leading spaces"),
             "<|user|>\nhi there": [user] + sp.encode("\nhi there")}  # SentencePiece prefixes each text piece
    plain = AutoTokenizer.from_pretrained(tmp_path / "final")
    assert any(plain.encode(t, add_special_tokens=False) != want for t, want in cases.items())  # the trap
    models.as_shipped(plain, tmp_path / "final")
    for text, want in cases.items():
        assert plain.encode(text, add_special_tokens=False) == want, text
