"""Forgetting-aware fine-tuning: keep the base model's behaviour where the task data says nothing.

A narrow training file (a persona, a support style) teaches the model that
every answer looks like the file's answers; asked "What is the capital of
France?" afterwards, it introduces itself. Both levers here start from the
same material: the *base* model's own answers to general prompts shipped
with strop (``preserve_data/general_prompts.jsonl``: 200 prompts the project
wrote, disjoint from every evaluation set), sampled at temperature 1 and
cached per base model and settings under the strop cache, so only the first
run on a base pays for generating them. An answer in which the base talks
about itself (its name, its maker, being an AI) is left out: it would pull
the old identity back against a persona file.

``preserve: kl`` (what the default, ``auto``, picks for chat SFT in one
process or under DDP, except prompt and prefix tuning, which take it when asked): those
conversations are not trained on. After the task's
own backward, a micro-batch adds ``preserve_weight`` x the mean per-token
KL(base || model) of the next-token distributions over the answer tokens of
some of them (with ``preserve_pack`` they join the micro-batch's packed row
instead, one forward and backward for both: train/preserve_kl.py): ``preserve_ratio`` general rows per training row (0.125 by
default: one row every other micro-batch of 4), in a seeded order that
depends only on the step, so a resumed run sees the same rows. The base is
the same model with its adapter turned off (peft's ``disable_adapter``): no
second copy is loaded, and since it never changes its last hidden states on
a row are computed once and kept. Prompt and prefix tuning put what they
learn in front of the text, so their side of the comparison is the peft
model's own forward (one row at a time) and the base is the decoder alone.
Full fine-tuning and bottleneck adapters have nothing to turn off: the base is a snapshot taken before the first step
(each row's last hidden states and a copy of the output layer). The target is the base's whole
distribution, not a sample of it, so unlike replay it cannot be memorised at
a high learning rate.

``preserve: replay``: the conversations join the training split
(``preserve_ratio`` rows per training row, 0.5 by default; self-distillation
with no change to the loss). It pays at low learning rates and hurts at high
ones, where the replayed samples themselves get memorised.

Either way the number of general conversations is the ratio times the
training rows, at least ``MIN_ROWS`` and at most the prompts available, and
the validation split stays task rows only, so eval loss still measures the
task. Which prompts (``preserve_select``): by default a seeded sample
(``random``); ``nearest`` takes the ones closest to the task's own prompts
(cosine similarity of all-MiniLM-L6-v2 embeddings, each general prompt scored
by its closest task prompt), which is where a narrow file's answers leak
first: a persona file full of "Who made you?" teaches the model to introduce
itself to "Who wrote Romeo and Juliet?", not to "Write a poem about autumn".
docs/quality.md has the measurements behind these choices (on personas the
project never trained on, ``nearest`` named the persona more often at the
same forgetting; on the demo's file, which mixes general rows in, one
held-out question less).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import sys
import time
from importlib import resources
from pathlib import Path

from ..methods.preserve import DEFAULT_RATIO, mode_for, ratio_for  # noqa: F401 (part of this module's interface)

MIN_ROWS = 16
NEAREST_SAMPLE = 2048  # task prompts embedded to rank the general ones: bounds the time on a large file
MAX_NEW_TOKENS = 96
# Answers are *sampled* at the base's own temperature, not greedy: training on samples from the
# base pulls the model towards the base's whole distribution, while greedy answers (low-entropy,
# often repetitive) sharpened it and raised general-text perplexity +29% / +153% (docs/quality.md).
TEMPERATURE = 1.0
GEN_BATCH = 16
SELF_TALK = re.compile(r"\b(smollm|hugging ?face|my name is|i am an ai|i'm an ai|as an ai|an ai (assistant|model)|"
                       r"language model|trained by|created by|developed by|built by|i was (made|designed))\b", re.I)


def prompts() -> list[str]:
    text = (resources.files("strop") / "preserve_data" / "general_prompts.jsonl").read_text(encoding="utf-8")
    return [json.loads(line)["prompt"] for line in text.splitlines() if line.strip()]


def replay_count(n_train: int, ratio: float, available: int) -> int:
    return min(available, max(MIN_ROWS, math.ceil(ratio * n_train)))


def _cache_file(cfg, model_dir: Path) -> Path:
    from .. import models

    weights = sorted(model_dir.glob("*.safetensors"))
    ident = {"model": str(model_dir.resolve()), "weights": [(p.name, p.stat().st_size, int(p.stat().st_mtime))
                                                            for p in weights],
             "system_prompt": cfg.system_prompt, "max_new_tokens": MAX_NEW_TOKENS, "temperature": TEMPERATURE,
             "seed": cfg.seed, "version": 2}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return models.cache_root() / "replay" / f"{digest}.json"


def base_answers(cfg, tok, wanted: list[str]) -> tuple[dict[str, str], int, float]:
    """Base-model answers (sampled, seeded) to ``wanted``, from the cache or generated now; (answers, generated, seconds)."""
    from .. import models

    model_dir = models.resolve(cfg.base_model)
    cache = _cache_file(cfg, model_dir) if isinstance(model_dir, Path) else None
    known = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
    missing = [p for p in wanted if p not in known]
    t0 = time.monotonic()
    if missing:
        if os.environ.get("RANK", "0") in ("", "0"):  # one line per run, not per process
            print(f"strop: preserve: the base model answers {len(missing)} general prompts (cached after the "
                  "first run on this base; --preserve none turns forgetting protection off) ...",
                  file=sys.stderr, flush=True)
        known.update(_generate(cfg, tok, missing))
        if cache is not None:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(f".{os.getpid()}.tmp")  # each rank of an --nproc run writes its own
                tmp.write_text(json.dumps(known))
                tmp.replace(cache)
            except OSError:
                pass  # a read-only cache only costs the next run the same generation
    return {p: known[p] for p in wanted}, len(missing), time.monotonic() - t0


def _generate(cfg, tok, todo: list[str]) -> dict[str, str]:
    import torch

    from .. import models
    from ..models.templates import prompt_text

    model = models.load_model(cfg.base_model, "float32", policy=models.policy(cfg)).eval()
    side = tok.padding_side
    tok.padding_side = "left"
    out = {}
    try:
        # fork_rng: the run's own seeded state (LoRA init, data order) is the same whether or not
        # the answers came from the cache
        with torch.inference_mode(), torch.random.fork_rng():
            for i in range(0, len(todo), GEN_BATCH):
                batch = todo[i:i + GEN_BATCH]
                texts = [prompt_text(tok, [{"role": "user", "content": p}], cfg.system_prompt) for p in batch]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                torch.manual_seed(cfg.seed + i)  # the same answers for the same seed, cached or not
                gen = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=True, temperature=TEMPERATURE,
                                     top_p=1.0, top_k=0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
                for p, ids in zip(batch, gen[:, enc["input_ids"].shape[1]:]):
                    out[p] = tok.decode(ids, skip_special_tokens=True).strip()
    finally:
        tok.padding_side = side
    del model
    return out


def nearest_first(pool: list[str], asked: list[str], seed: int) -> list[str]:
    """``pool`` ordered by each prompt's cosine similarity to its closest prompt in ``asked`` (all-MiniLM-L6-v2
    embeddings), closest first; ties keep ``pool``'s order. A larger ``asked`` is sampled to NEAREST_SAMPLE
    prompts (seeded), which bounds the embedding time."""
    import numpy as np

    from ..models.embeddings import embed

    if len(asked) > NEAREST_SAMPLE:
        asked = random.Random(seed).sample(asked, NEAREST_SAMPLE)
    closest = (embed(pool) @ embed(asked).T).max(axis=1)  # embed's vectors are unit-length: dot = cosine
    return [pool[i] for i in np.argsort(-closest, kind="stable")]


def replay_conversations(cfg, tok, n_train: int, mode: str = "replay", asked: list[str] | None = None) -> tuple[list, dict]:
    """The general conversations for a run with ``n_train`` task rows, and what was done (for the run record).
    ``asked``: the task's own prompts, for ``preserve_select: nearest`` (without them the pick is random)."""
    from ..data.records import Conversation, Message

    pool = prompts()
    line = {p: i + 1 for i, p in enumerate(pool)}
    ratio = ratio_for(cfg, mode)
    n = replay_count(n_train, ratio, len(pool))
    order = random.Random(cfg.seed).sample(pool, len(pool))
    select = getattr(cfg, "preserve_select", "random") if asked else "random"
    if select == "nearest":
        order = nearest_first(order, asked, cfg.seed)
    convs, skipped, generated, seconds, taken = [], 0, 0, 0.0, 0
    while len(convs) < n and taken < len(order):
        # ask for a few spares, since answers about the base itself are left out
        want = order[taken:taken + (n - len(convs)) + (n - len(convs)) // 2 + 4]
        taken += len(want)
        answers, made, secs = base_answers(cfg, tok, want)
        generated, seconds = generated + made, seconds + secs
        for prompt in want:
            answer = answers[prompt]
            if len(convs) == n:
                break
            if not answer or SELF_TALK.search(answer):
                skipped += 1
                continue
            convs.append(Conversation([Message("user", prompt), Message("assistant", answer)],
                                      source="strop:replay", line=line[prompt]))
    record = {"mode": mode, "ratio": ratio, "select": select, "task_rows": n_train, "replay_rows": len(convs),
              "skipped_self_talk_or_empty": skipped, "generated_now": generated,
              "generation_s": round(seconds, 1), "prompts": "strop/preserve_data/general_prompts.jsonl"}
    return convs, record
