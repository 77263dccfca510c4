"""Supervised fine-tuning: the SFT objective's part of a run (strop.train.run drives it).

strop renders and masks the data itself (see data/render.py) and hands TRL
rows of ``input_ids`` + ``labels``; TRL then only batches and trains.
"""
from __future__ import annotations

import contextlib

from ..core.config import TrainConfig
from ..core.rundir import RunDir
from . import distributed
from .callbacks import CheckpointFirstLayers, generation_callbacks
from .setup import checkpointing, load_trainable
from .sft_data import Prepared, prepare  # noqa: F401 (prepare: this objective's rows)


def check(cfg: TrainConfig, world) -> None:
    from ..methods.preserve import check_strategy

    # kl's rows take a direct forward of the model, which sharded weights cannot serve; auto turns itself off
    # there (preserve.mode_for)
    check_strategy(cfg, distributed.strategy())


def evaluates(cfg: TrainConfig) -> bool:
    return True


def callbacks(cfg: TrainConfig, tok, run: RunDir, checkpoint: tuple) -> list:
    on, layers, _ = checkpoint
    out = [CheckpointFirstLayers(layers)] if on and layers else []  # only the first layers recompute
    return out + generation_callbacks(cfg, tok, run.metrics)  # BLEU/ROUGE/exact match on held-out prompts


def build(cfg: TrainConfig, common: dict, data: dict, tok, callbacks: list, prepared: Prepared):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        **common,
        # strop truncates while rendering; TRL refuses a max_length with padding-free rows.
        max_length=None if cfg.padding_free else cfg.max_length,
        # Padding-free rows hold no pad tokens, and the pad id doubles as <|im_end|>,
        # so "non_padding" would wrongly skip real end-of-turn tokens there.
        include_num_input_tokens_seen="all" if cfg.padding_free else "non_padding",
        padding_free=cfg.padding_free,
    )
    trainer = SFTTrainer(model=load_trainable(cfg), args=args, processing_class=tok, callbacks=callbacks, **data)
    if prepared.anchors:  # preserve kl: keep the model near its base on general rows (train/preserve.py)
        from .preserve_kl import attach_kl

        attach_kl(trainer, prepared.anchors, cfg)
    return trainer


@contextlib.contextmanager
def speedups(cfg: TrainConfig, trainer):
    """What wraps the training loop: the levers of docs/performance.md, each switched off where it does not
    apply, and NEFTune's noise when asked for (train/neftune.py)."""
    from ..models.precision import SHARDED_STRATEGIES
    from ..patches.fused import lean_layers
    from ..patches.lm_head import labelled_positions_only
    from ..patches.varlen import per_example_attention
    from .neftune import noisy_embeddings

    with noisy_embeddings(trainer.model, cfg.neftune_noise_alpha), labelled_positions_only(cfg.score_labelled_only), \
            per_example_attention(trainer.model, cfg.padding_free and cfg.per_example_attention), \
            lean_layers(trainer.model, cfg.lean_layers and distributed.strategy() not in SHARDED_STRATEGIES):
        yield


def summary(cfg: TrainConfig, run: RunDir, trainer, figures: dict, wall: float, prepared: Prepared) -> dict:
    return figures | {"preserve": prepared.report.get("preserve")}


__all__ = ["check", "evaluates", "checkpointing", "callbacks", "prepare", "build", "speedups", "summary"]
