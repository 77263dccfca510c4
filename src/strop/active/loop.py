"""Oracle experiments: select -> reveal -> retrain -> eval, per strategy and seed.

The pool file carries labels, but the loop only reads an item's label once a
strategy has selected it (the "reveal"). Every strategy of one seed starts
from the same random initial set, so curves differ only by what was chosen.
The ``random`` baseline samples uniformly with no near-duplicate filter.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.config import DEFAULT_MODEL, build, load_yaml
from ..core.errors import StropError
from .learners import LEARNERS
from .pool import PoolItem, drop_overlap, read_pool
from .score import ScoreTable
from .select import DEDUP, STRATEGIES, select


@dataclass
class LoopConfig:
    pool: str = ""  # labelled rows; labels stay hidden until selected
    eval: str = ""  # held-out labelled rows the metric is computed on
    output_dir: str = "runs/al-loop"
    learner: str = "logreg"
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    rounds: int = 5
    budget: int = 10  # labels bought per round
    initial: int = 10  # random labels every strategy starts from
    signal: str = ""  # uncertainty signal; empty: margin when available, else entropy
    dedup: float = DEDUP
    labels: list[str] = field(default_factory=list)  # candidate answers (classification)
    logreg_c: float = 10.0
    # sft learner
    model: str = DEFAULT_MODEL
    method: str = "lora"
    train_steps: int = 20
    learning_rate: float = 1e-3
    samples: int = 0
    max_new_tokens: int = 16

    def validate(self) -> "LoopConfig":
        if not self.pool or not self.eval:
            raise StropError("loop config: 'pool' and 'eval' (labelled JSONL files) are required")
        if self.learner not in LEARNERS:
            raise StropError(f"loop config learner: unknown {self.learner!r} (valid: {', '.join(LEARNERS)})")
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or not self.strategies:
            raise StropError(f"loop config strategies: unknown {bad} (valid: {', '.join(STRATEGIES)})")
        for name in ("rounds", "budget", "initial"):
            if getattr(self, name) < 1:
                raise StropError(f"option --{name}: must be at least 1, got {getattr(self, name)}")
        if not self.seeds:
            raise StropError("loop config seeds: give at least one seed")
        return self


def load_loop_config(path: str, overrides: dict) -> LoopConfig:
    values = load_yaml(path) | {k: v for k, v in overrides.items() if v is not None}
    cfg = build(LoopConfig, values, origin=str(path))
    base = Path(path).parent  # data paths in a config are relative to the config file
    for name in ("pool", "eval"):
        value = getattr(cfg, name)
        if value and not Path(value).is_absolute() and not Path(value).exists():
            setattr(cfg, name, str(base / value))
    return cfg.validate()


def _oracle(path: str) -> list[PoolItem]:
    items = read_pool(path)
    missing = [it.where for it in items if it.answer is None]
    if missing:
        raise StropError(f"{path}: {len(missing)} of {len(items)} rows have no label; the loop needs one on every row "
                         f"(first: {missing[0]})")
    return items


def load_data(cfg: LoopConfig, warn=print) -> tuple[list[PoolItem], list[PoolItem]]:
    pool, held = _oracle(cfg.pool), _oracle(cfg.eval)
    pool, dropped = drop_overlap(pool, [it.text for it in held], cfg.eval)
    if dropped:
        warn(f"warning: {dropped} pool inputs also appear in the eval set {cfg.eval}; dropped them from the pool")
    need = cfg.initial + cfg.rounds * cfg.budget
    if need > len(pool):
        raise StropError(f"option --budget: initial {cfg.initial} + {cfg.rounds} rounds x {cfg.budget} = {need} labels "
                         f"is more than the {len(pool)} pool items")
    return pool, held


def accuracy(answers: list[str], items: list[PoolItem]) -> float:
    from ..metrics import normalize

    return sum(normalize(a) == normalize(it.answer) for a, it in zip(answers, items)) / len(items)


def run_curve(cfg: LoopConfig, strategy: str, seed: int, pool, pool_emb, held, held_emb, workdir: Path) -> list[list]:
    """One learning curve: [[labels, accuracy], ...] for rounds 0..N."""
    import numpy as np

    learner = LEARNERS[cfg.learner]
    labelled = [int(i) for i in np.random.default_rng(seed).choice(len(pool), cfg.initial, replace=False)]
    curve = []
    for r in range(cfg.rounds + 1):
        items = [pool[i] for i in labelled]
        fitted = learner.fit(cfg, items, pool_emb[labelled], seed, workdir / f"round-{r}")
        answers, _ = learner.predict(cfg, fitted, held, held_emb)
        curve.append([len(labelled), accuracy(answers, held)])
        if r == cfg.rounds:
            return curve
        taken = set(labelled)
        rest = [i for i in range(len(pool)) if i not in taken]
        if STRATEGIES[strategy].needs_uncertainty:
            drafts, signals = learner.predict(cfg, fitted, [pool[i] for i in rest], pool_emb[rest])
        else:
            drafts, signals = [""] * len(rest), {}
        table = ScoreTable([pool[i] for i in rest], drafts, signals, pool_emb[rest], pool_emb[labelled])
        picked, _ = select(table, cfg.budget, strategy, signal=cfg.signal or None, seed=seed * 1000 + r,
                           dedup=None if strategy == "random" else cfg.dedup, warn=lambda msg: None)
        labelled += [rest[i] for i in picked]  # reveal: these labels are now known
    return curve


def run_loop(cfg: LoopConfig, progress=print) -> dict:
    """Every strategy x seed; writes curves.json, summary.json and learning_curves.png."""
    from ..models.embeddings import embed
    from .curves import plot_curves, summarize

    pool, held = load_data(cfg, warn=progress)
    pool_emb, held_emb = embed([it.text for it in pool]), embed([it.text for it in held])
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves: dict[str, dict[str, list]] = {}
    for strategy in cfg.strategies:
        for seed in cfg.seeds:
            curve = run_curve(cfg, strategy, seed, pool, pool_emb, held, held_emb, out / "work" / f"{strategy}-{seed}")
            curves.setdefault(strategy, {})[str(seed)] = curve
            progress(f"{strategy:<12} seed {seed}: " + ", ".join(f"{n}:{acc:.3f}" for n, acc in curve))
    summary = summarize(curves)
    result = {"config": asdict(cfg), "pool_size": len(pool), "eval_size": len(held), "curves": curves, "summary": summary}
    (out / "curves.json").write_text(json.dumps(result, indent=2))
    result["plot"] = plot_curves(summary, out / "learning_curves.png",
                                 title=f"{cfg.learner} learner, {len(cfg.seeds)} seeds, pool {len(pool)}")
    return result
