"""`strop eval`: score a run against its base model (or one model alone) on an eval file.

Each system gets assistant-only perplexity, greedy answers scored by every
metric in ``METRICS``, and keyword hit rates when rows carry a keyword.
Results land in ``metrics.json``, ``predictions.jsonl`` and ``report.html``.
"""
from __future__ import annotations

import gc
import json
from pathlib import Path

from .. import models
from ..config import TrainConfig, load_yaml
from ..data import Dataset, load
from ..errors import StropError
from ..report.html import plot_loss_curve, write_report
from ..train.rundir import RunDir
from .metrics import compute_all, keyword_hit_rate, keyword_hits, perplexity

GEN_BATCH_SIZE = 8


def evaluate(target: str, data: str, output: str | None = None, max_new_tokens: int = 64,
             general: str | None = None, compare_base: bool = True) -> dict:
    """Evaluate ``target`` (run dir or model) on ``data``; write and return the metrics."""
    dataset = load(data)
    general_set = load(general) if general else None
    run = _run_dir(target)
    systems = _systems(target, run, compare_base)
    max_length = int(_run_config(run).get("max_length", TrainConfig.max_length)) if run else TrainConfig.max_length
    out = Path(output) if output else (run.eval if run else Path.cwd() / "eval")

    results: dict[str, dict] = {}
    predictions: list[dict] = []
    for name, model_name in systems:
        scores, rows = _score_system(name, model_name, dataset, general_set, max_length, max_new_tokens)
        results[name] = scores
        predictions += rows

    metrics = {"target": str(target), "systems": results, "data": str(data), "n": len(dataset)}
    if general:
        metrics["general"] = str(general)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in predictions)
    curve = plot_loss_curve(run.read_metrics(), out / "loss_curve.png") if run else None
    write_report(out / "report.html", f"strop eval: {target}", metrics, predictions,
                 Path(curve).name if curve else None)
    return {**metrics, "output": str(out)}


def _run_dir(target: str) -> RunDir | None:
    path = Path(target).expanduser()
    return RunDir(path) if path.is_dir() and models.is_run_dir(path) else None


def _run_config(run: RunDir) -> dict:
    return load_yaml(run.config)


def _systems(target: str, run: RunDir | None, compare_base: bool) -> list[tuple[str, str]]:
    """(display name, model name) pairs, base first so the table reads before -> after."""
    if run is None:
        return [("model", target)]
    if not compare_base:
        return [("tuned", str(run.root))]
    base = _run_config(run).get("base_model")
    if not base:
        raise StropError(f"{run.config}: no base_model to compare against (pass compare_base=False)")
    return [("base", str(base)), ("tuned", str(run.root))]


def _score_system(name: str, model_name: str, dataset: Dataset, general_set: Dataset | None,
                  max_length: int, max_new_tokens: int) -> tuple[dict, list[dict]]:
    from ..serve.engine import Engine

    engine = Engine(model_name)
    try:
        scores = perplexity(engine.model, engine.tok, dataset.conversations, max_length,
                            system_prompt=engine.system_prompt)
        answers, rows = _generate(engine, name, "eval", dataset, max_new_tokens)
        scores.update(compute_all(answers, [c.reference for c in dataset.conversations]))
        rate = _hit_rate(rows)
        if rate is not None:
            scores["keyword_hit_rate"] = rate
        if general_set is not None:
            _, general_rows = _generate(engine, name, "general", general_set, max_new_tokens)
            rate = _hit_rate(general_rows)
            if rate is None:
                raise StropError(f"{general_set.path}: general questions need a 'keyword' on each row")
            scores["general_hit_rate"] = rate
            rows += general_rows
    finally:
        # Two models side by side would double peak memory; free one before the next loads.
        del engine
        _free_memory()
    return scores, rows


def _generate(engine, system: str, set_name: str, dataset: Dataset, max_new_tokens: int) -> tuple[list[str], list[dict]]:
    convs = dataset.conversations
    prompts = [[{"role": m.role, "content": m.content} for m in c.prompt_messages] for c in convs]
    answers = engine.generate_batch(prompts, max_new_tokens=max_new_tokens, batch_size=GEN_BATCH_SIZE)
    keywords = [c.meta.get("keyword") for c in convs]
    rows = []
    for conv, prompt, answer, kw in zip(convs, prompts, answers, keywords):
        hit = keyword_hits([answer], [str(kw)])[0] if kw else None
        rows.append({"system": system, "set": set_name, "where": conv.where, "prompt": _prompt_text(prompt),
                     "reference": conv.reference, "prediction": answer, "keyword": kw, "hit": hit})
    return answers, rows


def _hit_rate(rows: list[dict]) -> float | None:
    """Keyword hit rate over the rows that carry a keyword; None when none do."""
    keyed = [r for r in rows if r["keyword"]]
    if not keyed:
        return None
    return keyword_hit_rate([r["prediction"] for r in keyed], [str(r["keyword"]) for r in keyed])["keyword_hit_rate"]


def _prompt_text(messages: list[dict]) -> str:
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
