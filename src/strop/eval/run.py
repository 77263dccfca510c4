"""`strop eval`: did fine-tuning help, compared with what, and is it fair?

With a run directory the systems are the base model, optionally the base
model with a few-shot prompt (``baselines``), and the tuned model, all on the
same examples. Every headline number gets a bootstrap interval and every pair
of systems a paired test. Results land in ``metrics.json``,
``predictions.jsonl`` and ``report.html``.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path

from .. import models
from ..core.config import TrainConfig, load_yaml
from ..core.errors import StropError
from ..core.rundir import RunDir
from ..data import Dataset, load, split
from .systems import Spec, Task, score_system


@dataclass
class Options:
    baselines: bool = False
    bias: bool = False
    labels: list[str] | None = None
    k_shot: int = 4
    baseline_prompt: str | None = None
    judge_endpoint: str | None = None
    judge_model: str = "judge"
    judge_api_key: str | None = None
    judge_mode: str = "rubric"  # rubric or pairwise (judge.JUDGE_MODES)
    group_column: str | None = None
    resamples: int = 1000
    seed: int = 0
    allow_pickle: bool = False  # load .bin/.pt weights, read with weights_only=True
    scales: list[float] | None = None  # adapter scales to sweep between base (0) and tuned (1), eval/sweep.py
    forgetting_budget: float = 0.05  # the sweep's limit on the general-text perplexity rise
    apply_scale: bool = False  # write the sweep's chosen scale into the run's adapter


def evaluate(target: str, data: str | None = None, output: str | None = None, max_new_tokens: int = 64,
             general: str | None = None, compare_base: bool = True, **options) -> dict:
    """Evaluate ``target`` (run dir or model) on ``data``; write and return the metrics.

    ``options`` are the fields of ``Options`` (baselines, bias, labels, k_shot, ...).
    """
    from ..core.paths import check_output
    from .collect import collect, write_outputs

    opts = Options(**options)
    t0 = time.monotonic()
    run = _run_dir(target)
    out = Path(output) if output else (run.eval if run else Path.cwd() / "eval")
    check_output(out, kind="dir", label="--output" if output else "eval output")  # before any model loads
    cfg = load_yaml(run.config) if run else {}
    dataset, data_name = _eval_data(data, run, cfg)
    _check_references(dataset)
    task = Task(dataset, load(general) if general else None,
                int(cfg.get("max_length", TrainConfig.max_length)), max_new_tokens)
    _set_labels(task, opts)
    specs = _specs(target, run, cfg, compare_base, opts, dataset)
    _check_judge(opts, specs)
    _check_sweep(opts, run, specs)
    raw = _score_all(specs, task, opts, with_general_text=True)
    metrics, predictions = collect(raw, specs, task, opts, run, target=str(target), data=data_name, general=general)
    if opts.scales:
        from .sweep import apply_scale, summarise

        metrics["scale_sweep"] = summarise(raw["sweep"], metrics["systems"], metrics["general_text"],
                                           opts.forgetting_budget)
        if opts.apply_scale and metrics["scale_sweep"]["chosen"] is not None:
            metrics["scale_sweep"]["applied"] = apply_scale(run.root, metrics["scale_sweep"]["chosen"])
    metrics["eval_wall_s"] = round(time.monotonic() - t0, 1)
    if run is not None and run.summary.is_file():  # what the run did against forgetting, beside what it cost
        import json

        metrics["preserve"] = json.loads(run.summary.read_text()).get("preserve")
    write_outputs(out, metrics, predictions, run, str(target))
    return {**metrics, "output": str(out)}


def _run_dir(target: str) -> RunDir | None:
    path = Path(target).expanduser()
    return RunDir(path) if path.is_dir() and models.is_run_dir(path) else None


def _eval_data(data: str | None, run: RunDir | None, cfg: dict) -> tuple[Dataset, str]:
    """The given file, else the run's eval_data, else the validation split training held out."""
    if data:
        return load(data), str(data)
    if run is None:
        raise StropError("--data: required when evaluating a model rather than a run directory")
    if cfg.get("eval_data"):
        return load(cfg["eval_data"]), str(cfg["eval_data"])
    _, held = _split(cfg)
    if not held:
        raise StropError(f"{run.config}: the run held out no validation rows (val_size 0); pass --data")
    return Dataset(cfg["data"], "split", held), f"{cfg['data']} (validation split held out by training)"


def _split(cfg: dict):
    if not cfg.get("data"):
        raise StropError("config.yaml: no training data recorded; pass --data")
    train = load(cfg["data"])
    if cfg.get("eval_data"):
        return train.conversations, []
    return split(train.conversations, float(cfg.get("val_size", TrainConfig.val_size)),
                 int(cfg.get("seed", TrainConfig.seed)))


def _check_references(dataset: Dataset) -> None:
    for conv in dataset.conversations:
        if not conv.reference.strip():
            raise StropError(f"{conv.where}: empty reference answer; reference metrics (BLEU, ROUGE, ...) need one")


def _set_labels(task: Task, opts: Options) -> None:
    from .classification import resolve_labels

    has_column = any("label" in c.meta for c in task.dataset.conversations)
    if opts.labels or has_column:
        task.labels, task.gold = resolve_labels(task.dataset.conversations, opts.labels, task.dataset.path)


def _specs(target: str, run: RunDir | None, cfg: dict, compare_base: bool, opts: Options,
           dataset: Dataset) -> list[Spec]:
    """Systems in reading order: base, few-shot, tuned."""
    from .baselines import build_few_shot

    if run is None:
        if opts.baselines:
            raise StropError("--baselines: needs a run directory (few-shot examples come from its training data)")
        return [Spec("model", target)]
    if not compare_base and not opts.baselines:
        return [Spec("tuned", str(run.root))]
    base = cfg.get("base_model")
    if not base:
        raise StropError(f"{run.config}: no base_model to compare against (pass compare_base=False)")
    specs = [Spec("base", str(base))]
    if opts.baselines:
        train, _ = _split(cfg)
        specs.append(Spec("few-shot", str(base), build_few_shot(train, dataset.conversations, opts.k_shot,
                                                                opts.seed, opts.baseline_prompt)))
    return specs + [Spec("tuned", str(run.root))]


def _check_sweep(opts: Options, run: RunDir | None, specs: list[Spec]) -> None:
    """Sweep options that cannot work fail before any model loads."""
    if opts.apply_scale and not opts.scales:
        raise StropError("--apply-scale: needs --scales (the sweep that chooses the scale)")
    if not 0 <= opts.forgetting_budget:
        raise StropError(f"--forgetting-budget: {opts.forgetting_budget} is negative (0.05 allows +5% perplexity)")
    if not opts.scales:
        return
    if run is None or not {"base", "tuned"} <= {s.name for s in specs}:
        raise StropError("--scales: needs a run directory evaluated with its base model (not --no-base)")
    from .sweep import check_sweepable

    check_sweepable(run.root)


def _check_judge(opts: Options, specs: list[Spec]) -> None:
    """Judge options that cannot work fail before any model loads."""
    from .judge import JUDGE_MODES

    if opts.judge_mode not in JUDGE_MODES:
        raise StropError(f"--judge-mode: {opts.judge_mode!r} is not one of {', '.join(JUDGE_MODES)}")
    names = {s.name for s in specs}
    if opts.judge_endpoint and opts.judge_mode == "pairwise" and not {"base", "tuned"} <= names:
        raise StropError("--judge-mode pairwise: compares tuned with base answers, so it needs a run directory "
                         "evaluated with its base model (not --no-base)")


def _score_all(specs: list[Spec], task: Task, opts: Options, with_general_text: bool) -> dict:
    """Load each distinct model once and run everything that needs it."""
    from ..models.engine import Engine
    from .forgetting import general_paragraphs, general_text_nll

    raw: dict = {"systems": {}, "general_text": {}, "bias": {}}
    for model_name in dict.fromkeys(s.model for s in specs):
        engine = Engine(model_name, allow_pickle=opts.allow_pickle)
        try:
            for spec in (s for s in specs if s.model == model_name):
                raw["systems"][spec.name] = score_system(engine, spec, task)
            weights = next(s.name for s in specs if s.model == model_name and s.few_shot is None)
            if with_general_text:
                raw["general_text"][weights] = general_text_nll(engine.model, engine.tok, general_paragraphs(),
                                                                task.max_length)
            if opts.bias:
                raw["bias"][weights] = _bias_scores(engine, task.max_length)
            if opts.scales and weights == "tuned":  # the scale sweep reuses the loaded adapter
                from .sweep import sweep

                raw["sweep"] = sweep(engine, task, opts.scales)
        finally:
            # Two models side by side would double peak memory; free one before the next loads.
            del engine
            _free_memory()
    return raw


def _bias_scores(engine, max_length: int) -> dict:
    from . import bias

    items = bias.counterfactual_items(bias.load_templates())
    pairs = bias.load_pairs()
    return {"items": items, "logps": bias.score_counterfactuals(engine.model, engine.tok, items,
                                                                 engine.system_prompt, max_length),
            "pairs": pairs, "margins": bias.score_pairs(engine.model, engine.tok, pairs)}


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
