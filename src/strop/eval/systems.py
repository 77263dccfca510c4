"""Score one system (a model, optionally with a few-shot prompt) on the eval set.

A system's result is its point scores, per-example ``Stats`` for intervals and
paired tests, the per-example rows for the report, and its cost (prompt and
answer tokens per request, latency per request).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..data import Dataset
from ..metrics import compute_all, keyword_hits
from .baselines import FewShot
from .classification import UNPARSED, parse_label, rank_labels
from .likelihood import example_nll
from .scores import generation_stats, nll_stats
from .stats import Stats, mean_stats

GEN_BATCH_SIZE = 8


@dataclass
class Spec:
    name: str  # "base", "few-shot", "tuned" or "model"
    model: str
    few_shot: FewShot | None = None


@dataclass
class Task:
    """What every system is asked, shared by all of them."""

    dataset: Dataset
    general_set: Dataset | None
    max_length: int
    max_new_tokens: int
    labels: list[str] | None = None
    gold: list[str] | None = None


@dataclass
class Result:
    scores: dict
    stats: dict[str, Stats]
    rows: list[dict]
    cost: dict = field(default_factory=dict)


def score_system(engine, spec: Spec, task: Task) -> Result:
    convs = task.dataset.conversations
    wrapped = [spec.few_shot.wrap(c) for c in convs] if spec.few_shot else convs
    nll, tokens = example_nll(engine.model, engine.tok, wrapped, task.max_length, engine.system_prompt)
    stats = nll_stats(nll, tokens)
    scores = {"loss": stats["loss"].value(), "perplexity": stats["perplexity"].value(), "tokens": sum(tokens)}
    answers, cost = _generate(engine, wrapped, task.max_new_tokens)
    refs = [c.reference for c in convs]
    scores.update(compute_all(answers, refs))
    stats.update(generation_stats(answers, refs))
    rows = _rows(spec.name, "eval", convs, answers)
    keyed = [r for r in rows if r["keyword"]]
    if keyed:
        stats["keyword_hit_rate"] = mean_stats([float(r["hit"]) for r in keyed])
        scores["keyword_hit_rate"] = stats["keyword_hit_rate"].value()
    if task.labels:
        _classify(engine, spec, task, wrapped, rows, scores, stats)
    if task.general_set is not None:
        rows += _general(engine, spec, task, scores)
    return Result(scores, stats, rows, cost)


def _generate(engine, convs, max_new_tokens: int) -> tuple[list[str], dict]:
    prompts = [[{"role": m.role, "content": m.content} for m in c.prompt_messages] for c in convs]
    t0 = time.perf_counter()
    answers = engine.generate_batch(prompts, max_new_tokens=max_new_tokens, batch_size=GEN_BATCH_SIZE)
    wall = time.perf_counter() - t0
    prompt_tokens = [len(engine.encode(p)) for p in prompts]
    # generate_batch returns text; re-encoding it counts the answer's tokens (the end token excluded)
    answer_tokens = [len(engine.tok(a, add_special_tokens=False)["input_ids"]) for a in answers]
    n = len(prompts)
    return answers, {"requests": n, "prompt_tokens_per_request": sum(prompt_tokens) / n,
                     "answer_tokens_per_request": sum(answer_tokens) / n,
                     "latency_s_per_request": wall / n, "generation_wall_s": wall, "batch_size": GEN_BATCH_SIZE}


def _rows(system: str, set_name: str, convs, answers: list[str]) -> list[dict]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rows = []
    for conv, answer in zip(convs, answers):
        kw = conv.meta.get("keyword")
        rows.append({"system": system, "set": set_name, "where": conv.where, "prompt": question_text(conv),
                     "reference": conv.reference, "prediction": answer, "keyword": kw,
                     "hit": keyword_hits([answer], [str(kw)])[0] if kw else None,
                     "rougeL": scorer.score(conv.reference, answer)["rougeL"].fmeasure})
    return rows


def question_text(conv) -> str:
    messages = conv.prompt_messages
    if len(messages) == 1:
        return messages[0].content
    return "\n".join(f"{m.role}: {m.content}" for m in messages)


def _classify(engine, spec: Spec, task: Task, wrapped, rows: list[dict], scores: dict, stats: dict) -> None:
    ranked = rank_labels(engine.model, engine.tok, wrapped, task.labels, engine.system_prompt, task.max_length)
    for row, gold, ll in zip(rows, task.gold, ranked):
        row["label"] = gold
        row["parsed"] = parse_label(row["prediction"], task.labels)
        row["correct"] = row["parsed"] == gold
        row["ll_label"] = ll
    stats["accuracy"] = mean_stats([float(r["correct"]) for r in rows])
    stats["ll_accuracy"] = mean_stats([float(r["ll_label"] == r["label"]) for r in rows])
    scores["accuracy"] = stats["accuracy"].value()
    scores["ll_accuracy"] = stats["ll_accuracy"].value()
    scores["unparsed"] = sum(r["parsed"] == UNPARSED for r in rows)


def _general(engine, spec: Spec, task: Task, scores: dict) -> list[dict]:
    from ..core.errors import StropError

    convs = task.general_set.conversations
    wrapped = [spec.few_shot.wrap(c) for c in convs] if spec.few_shot else convs
    answers, _ = _generate(engine, wrapped, task.max_new_tokens)
    rows = _rows(spec.name, "general", convs, answers)
    keyed = [r for r in rows if r["keyword"]]
    if not keyed:
        raise StropError(f"{task.general_set.path}: general questions need a 'keyword' on each row")
    scores["general_hit_rate"] = sum(r["hit"] for r in keyed) / len(keyed)
    return rows
