"""The numbers a plan needs about a model, read from its config.json alone (no weights)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import StropError


@dataclass(frozen=True)
class ModelShape:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    bias: bool

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer in one decoder block, by the names peft targets."""
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linears().values())

    def other_params(self) -> int:
        """Embeddings, untied LM head and norms: what 4-bit quantisation leaves alone."""
        head = 0 if self.tied else self.vocab * self.hidden
        return self.vocab * self.hidden + head + (2 * self.layers + 1) * self.hidden

    def total_params(self) -> int:
        return self.linear_params() + self.other_params()


def read_shape(model_dir: Path) -> ModelShape:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise StropError(f"{model_dir}: no config.json, so the model's size cannot be read")
    cfg = json.loads(path.read_text())
    cfg = cfg.get("text_config", cfg)  # multimodal configs nest the language model
    try:
        hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        return ModelShape(
            vocab=cfg["vocab_size"], hidden=hidden, layers=cfg["num_hidden_layers"], heads=heads,
            kv_heads=cfg.get("num_key_value_heads") or heads, head_dim=cfg.get("head_dim") or hidden // heads,
            intermediate=cfg.get("intermediate_size") or 4 * hidden,
            tied=bool(cfg.get("tie_word_embeddings", False)), bias=bool(cfg.get("attention_bias", False)),
        )
    except KeyError as exc:
        raise StropError(f"{path}: missing {exc.args[0]!r}; strop plan reads Llama-style decoder configs") from None
