"""Task metrics during training: greedy answers to a few held-out prompts, scored as `strop eval` does.

Loss says the model fits the tokens; BLEU, ROUGE-L and exact match say the
answers are getting right. The callback that calls this is
``callbacks.GenerationMetrics``; the eval_generate_* options are checked
with the config (strop.core.config.TrainConfig).
"""
from __future__ import annotations

from ..core.errors import StropError

GEN_METRICS = ("bleu", "rouge", "exact_match")  # names in metrics.py::METRICS
GEN_PREFIX = "gen_"  # metrics.jsonl keys: gen_bleu, gen_rougeL, gen_exact_match, ...
GEN_MAX_NEW_TOKENS = 64


def heldout_conversations(cfg) -> list:
    """The first ``eval_generate_samples`` held-out conversations: eval_data, else training's own split."""
    from ..data import load, split

    if cfg.eval_data:
        convs = load(cfg.eval_data).conversations
    else:
        _, convs = split(load(cfg.data).conversations, cfg.val_size, cfg.seed)
    convs = [c for c in convs if c.reference.strip()]
    if not convs:
        raise StropError("option eval_generate_samples: the held-out rows have no reference answers to score")
    return convs[:cfg.eval_generate_samples]


def score(predictions: list[str], references: list[str]) -> dict:
    """The GEN_METRICS of metrics.py, keys prefixed with ``gen_``."""
    from ..metrics import METRICS

    out: dict = {}
    for name in GEN_METRICS:
        out.update(METRICS[name](predictions, references))
    return {GEN_PREFIX + k: v for k, v in out.items()}
