"""Write a merged Llama-architecture HF directory as one GGUF file.

gguf-py (the `gguf` package) ships the writer, the tensor-name tables and the
quantizers, but not llama.cpp's `convert_hf_to_gguf.py`; so the mapping is
done here: tensor names through gguf's own MODEL_ARCH.LLAMA table, the q/k
row permutation llama.cpp expects (transformers' GGUF reader undoes it), and
the byte-level BPE tokenizer, special tokens and chat template as metadata.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import StropError

# --quant name -> (matrix type, embedding type, GGUF file type); norms stay F32.
QUANTS = {
    "f16": ("F16", "F16", "MOSTLY_F16"),
    "q8_0": ("Q8_0", "Q8_0", "MOSTLY_Q8_0"),
    # llama.cpp keeps the (tied) embedding at higher precision in low-bit files; Q8_0 here.
    "q4_1": ("Q4_1", "Q8_0", "MOSTLY_Q4_1"),
}


def _permute(w, n_head: int, n_head_kv: int | None = None):
    """llama.cpp's q/k row order (convert_hf_to_gguf.py LlamaModel.permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _check_arch(cfg: dict) -> None:
    if cfg.get("model_type") != "llama":
        raise StropError(f"--format gguf: only Llama-architecture models are supported (this one is {cfg.get('model_type')!r})")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise StropError(f"--format gguf: rope scaling {rope.get('rope_type')!r} is not supported")


def _header(w, cfg: dict, name: str, file_type: str) -> None:
    import gguf

    heads = cfg["num_attention_heads"]
    w.add_name(name)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(cfg.get("num_key_value_heads", heads))
    w.add_rope_freq_base(float((cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    w.add_file_type(getattr(gguf.LlamaFileType, file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _tokenizer(w, tok, model_dir: Path, pre: str) -> None:
    import gguf

    vocab = tok.get_vocab()
    n = max(vocab.values()) + 1
    tokens, types = [f"[PAD{i}]" for i in range(n)], [gguf.TokenType.UNUSED] * n
    for text, i in vocab.items():
        tokens[i], types[i] = text, gguf.TokenType.NORMAL
    for i, added in tok.added_tokens_decoder.items():
        types[i] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    merges = json.loads((model_dir / "tokenizer.json").read_text())["model"].get("merges", [])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for key, token in (("bos", tok.bos_token), ("eos", tok.eos_token), ("unk", tok.unk_token), ("pad", tok.pad_token)):
        if token is not None:
            getattr(w, f"add_{key}_token_id")(tok.convert_tokens_to_ids(token))
    w.add_add_bos_token(False)  # the chat template writes every special token itself
    w.add_chat_template(tok.chat_template)


def _tensors(w, model_dir: Path, cfg: dict, quant: str) -> None:
    import gguf
    from safetensors import safe_open

    matrix, embed, _ = QUANTS[quant]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg["num_hidden_layers"])
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            for hf_name in f.keys():
                if hf_name == "lm_head.weight" and cfg.get("tie_word_embeddings"):
                    continue
                name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise StropError(f"--format gguf: no GGUF name for tensor {hf_name}")
                data = f.get_tensor(hf_name).float().numpy()
                if hf_name.endswith("q_proj.weight"):
                    data = _permute(data, heads, heads)
                elif hf_name.endswith("k_proj.weight"):
                    data = _permute(data, heads, kv)
                kind = "F32" if data.ndim == 1 else (embed if name.startswith("token_embd") else matrix)
                _add(w, name, data, kind)


def _add(w, name: str, data, kind: str) -> None:
    import gguf
    import numpy as np

    qtype = getattr(gguf.GGMLQuantizationType, kind)
    if kind == "F32":
        w.add_tensor(name, data.astype(np.float32))
    elif kind == "F16":
        w.add_tensor(name, data.astype(np.float16))
    else:
        w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def write(model_dir: Path, out: Path, quant: str, *, name: str, pre: str = "gpt2") -> None:
    """Write ``model_dir`` (an unquantized HF Llama directory) to ``out``."""
    import gguf
    from transformers import AutoTokenizer

    if quant not in QUANTS:
        raise StropError(f"option --quant: {quant!r} is not one of {', '.join(QUANTS)}")
    cfg = json.loads((model_dir / "config.json").read_text())
    _check_arch(cfg)
    w = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _header(w, cfg, name, QUANTS[quant][2])
    _tokenizer(w, AutoTokenizer.from_pretrained(model_dir), model_dir, pre)
    _tensors(w, model_dir, cfg, quant)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
