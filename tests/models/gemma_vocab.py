"""A small SentencePiece tokenizer with Gemma's layout, for tests of SentencePiece families."""
from __future__ import annotations

from pathlib import Path

def _train_sentencepiece(out: Path, **layout) -> None:
    """out/tokenizer.model: 600 BPE pieces trained on the project's general text, byte fallback, digits
    split, whitespace kept; ``layout`` gives the family's special ids and prefix rule."""
    import io

    import sentencepiece as spm

    text = (Path(__file__).resolve().parents[2] / "src/strop/eval/data/general_text.txt").read_text()
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line for line in text.splitlines() if line.strip()]), model_writer=model,
        model_type="bpe", vocab_size=600, byte_fallback=True, character_coverage=1.0, split_digits=True,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, normalization_rule_name="identity",
        num_threads=1, minloglevel=2, **layout)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model.getvalue())


# Gemma's turn markers, and a template written for these tests with Gemma's shape: no system role (the system
# text opens the first user turn), the assistant called "model"
GEMMA_TEMPLATE = (
    "{{ bos_token }}{%- set prefix = '' %}{%- set first = 0 %}"
    "{%- if messages[0].role == 'system' %}{%- set prefix = messages[0].content + '\n\n' %}{%- set first = 1 %}{%- endif %}"
    "{%- for m in messages[first:] %}<start_of_turn>{{ 'model' if m.role == 'assistant' else 'user' }}\n"
    "{{ prefix if loop.first else '' }}{{ m.content | trim }}<end_of_turn>\n{% endfor %}"
    "{%- if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def gemma_tokenizer(out: Path):
    """A SentencePiece tokenizer with Gemma's layout, trained here on the project's general text.

    Gemma 2's converter reads the family's SentencePiece ``tokenizer.model`` and no package ships one, so the
    test makes one the way Google's was made, only small: BPE with byte fallback (any character outside the
    600 pieces still tokenizes), digits split, no dummy prefix, whitespace kept as it is, ids 0-3 for
    pad/eos/bos/unk and the two turn markers as whole pieces. transformers converts it to its fast
    GemmaTokenizer; llama.cpp reads the same file through the converter; tests/interop's strings check they agree.
    """
    import json

    from transformers import AutoTokenizer

    _train_sentencepiece(out, add_dummy_prefix=False, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
                         eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
                         user_defined_symbols=["<start_of_turn>", "<end_of_turn>"])
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<end_of_turn>",
        "pad_token": "<pad>", "unk_token": "<unk>", "add_bos_token": True, "chat_template": GEMMA_TEMPLATE,
        "extra_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}))  # special, as in Gemma's own files
    return AutoTokenizer.from_pretrained(out)


# Phi-3's turn markers and a template with Phi-3's shape, written for these tests
PHI3_TEMPLATE = (
    "{%- for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def phi3_tokenizer(out: Path):
    """A SentencePiece tokenizer with Phi-3 mini's layout (Llama 2's): a dummy prefix space, ids 0-2 for
    unk/bos/eos, byte fallback, and Phi-3's chat markers added after the pieces as special tokens."""
    import json

    from transformers import AutoTokenizer

    _train_sentencepiece(out, add_dummy_prefix=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>",
        "pad_token": "<|endoftext|>", "add_bos_token": False, "legacy": False, "chat_template": PHI3_TEMPLATE,
        "extra_special_tokens": ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]}))
    # Phi-3 ships a tokenizer.json whose normalizer always prepends the space, as SentencePiece does;
    # transformers 5's own conversion of tokenizer.model skips it before a leading space, so write Phi-3's
    AutoTokenizer.from_pretrained(out).save_pretrained(out)
    spec = json.loads((out / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    spec["pre_tokenizer"] = None
    spec["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    from strop import models

    tok = AutoTokenizer.from_pretrained(out)
    models.as_shipped(tok, out)  # without a config.json beside it, transformers 5 rebuilds the pipeline
    return tok
