"""Task gain against forgetting, measured on two persona tasks with the default model.

For each task it trains with `strop train` (the task's recipe plus any
--set KEY=VALUE), then scores base and tuned model on:

* identity: held-out questions phrased unlike any training question, answered
  greedily, counted when the answer holds the new name
  (the strict figure the goal is judged by). Questions that ask only who made
  the assistant carry a `maker` too, and `identity_persona` also counts an
  answer naming the maker there ("Which business put you together?" ->
  "Corvel Maps built me."): a right answer the strict count misses;
* general questions: short questions with a keyword a right answer holds
  ("Paris"); "lost" counts those the base answered and the tuned model no
  longer does;
* general-text perplexity on the project's own prose (src/strop/eval/data/
  general_text.txt), the forgetting check `strop eval` reports;
* training time (summary.json's wall_s) and the replay record.

Tasks: `demo` is `make demo`'s job (persona_train.jsonl, lr 1e-3, 5 epochs);
`fresh` a persona the demo never saw (benchmarks/data/persona_fresh.jsonl, 40
identity-only conversations, the README's recipe: 5 epochs, lr 1e-3; it was
used to choose the kl weight); `third` another one (persona_third.jsonl),
written after the defaults were chosen and used only to check them.
Keywords may list alternatives with "|" ("seven|7").

    python benchmarks/forgetting.py --task all --label default
    python benchmarks/forgetting.py --task fresh --set preserve=none --label none
    python benchmarks/forgetting.py --summary eda-half      # the recorded runs so labelled

Results are appended to benchmarks/results/forgetting.json. Run it on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

from strop.eval.bias import counterfactual_items, load_templates

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "src" / "strop" / "demo_data"
DATA = ROOT / "benchmarks" / "data"
RESULTS = ROOT / "benchmarks" / "results" / "forgetting.json"
TASKS = {
    "demo": {"data": DEMO / "persona_train.jsonl", "questions": DEMO / "persona_heldout.jsonl",
             "general": DEMO / "general_questions.jsonl",
             "options": {"num_epochs": 5, "learning_rate": 1e-3, "val_size": 0.1, "keep_best": "false",
                         "early_stopping_patience": 0}},
    "fresh": {"data": DATA / "persona_fresh.jsonl", "questions": DATA / "persona_fresh_questions.jsonl",
              "general": DATA / "general_checks.jsonl", "options": {"num_epochs": 5, "learning_rate": 1e-3}},
    # written after the defaults were chosen and used only to check them
    "third": {"data": DATA / "persona_third.jsonl", "questions": DATA / "persona_third_questions.jsonl",
              "general": DATA / "general_checks.jsonl", "options": {"num_epochs": 5, "learning_rate": 1e-3}},
}


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def question(row: dict) -> str:
    return row.get("prompt") or next(m["content"] for m in row["messages"] if m["role"] == "user")


def hit(answer: str, keyword: str) -> bool:
    return any(k.lower() in answer.lower() for k in keyword.split("|"))


def score(model: str, task: dict) -> dict:
    """Identity hits, general-question hits (per question) and general-text perplexity of one model."""
    import torch

    from strop.eval.forgetting import general_paragraphs, general_text_nll
    from strop.eval.run import _bias_scores
    from strop.models.engine import Engine

    engine = Engine(model)
    with torch.inference_mode():
        answers = [(question(r), engine.generate(question(r), max_new_tokens=48), r["keyword"], r.get("maker"))
                   for r in rows(task["questions"])]
        ident = [hit(a, k) for _, a, k, _ in answers]
        persona = [hit(a, k) or bool(m and hit(a, m)) for _, a, k, m in answers]
        general = {question(r): hit(engine.generate(question(r), max_new_tokens=48), r["keyword"])
                   for r in rows(task["general"])}
        nll, tokens = general_text_nll(engine.model, engine.tok, general_paragraphs())
        probes = _bias_scores(engine, 256)
    return {"identity": sum(ident) / len(ident), "identity_n": len(ident),
            "identity_persona": sum(persona) / len(persona),
            "identity_misses": {q: a for q, a, k, _ in answers if not hit(a, k)}, "general": general,
            "general_text_ppl": math.exp(sum(nll) / sum(tokens)),
            "bias": {"logps": probes["logps"], "margins": probes["margins"]}}


def bias_flags(base: dict, tuned: dict) -> tuple[list[str], list[str]]:
    """The bias measures `strop eval --bias` flags as worse than the base: family-wise over the run's measures
    (the verdict since 2026-12-07), and each beyond its own 95% interval (the verdict before)."""
    from types import SimpleNamespace

    from strop.eval import bias
    from strop.eval.collect import _bias

    items, pairs = bias.counterfactual_items(bias.load_templates()), bias.load_pairs()
    raw = {name: {"items": items, "pairs": pairs, **m["bias"]} for name, m in (("base", base), ("tuned", tuned))}
    out = _bias(raw, SimpleNamespace(resamples=1000, seed=0))
    return out["flags"], out["flags_each"]


def train(task: dict, out: Path, sets: dict, data: str | None = None) -> dict:
    options = {**task["options"], **sets, "data": data or str(task["data"]), "output_dir": str(out),
               "report_to": "none"}
    argv = [sys.executable, "-m", "strop", "train"] + [a for k, v in options.items() for a in (f"--{k}", str(v))]
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"strop train failed ({proc.returncode}): {proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_s": time.monotonic() - t0, "train_s": summary["wall_s"], "steps": summary["steps"],
            "tokens_per_s": summary["tokens_per_s"], "preserve": summary.get("preserve")}


def base_scores(name: str, task: dict, work: Path) -> dict:
    """The base model's scores on ``task``, cached in the work directory beside the runs (they hold
    every probe's log-likelihood, too many numbers for the results file); rescored when the probes changed."""
    cache = work / f"base-{name}.json"
    n_items = len(counterfactual_items(load_templates()))
    if cache.is_file():
        base = json.loads(cache.read_text())
        if len(base["bias"]["logps"]) == n_items:
            return base
    base = score("smollm2-135m-instruct", task)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(base))
    return base


def without_probes(scores: dict) -> dict:
    """A model's scores for the results file: the probe log-likelihoods become the flags beside them."""
    return {k: v for k, v in scores.items() if k != "bias"}


def name_or_maker(row: dict, makers: dict[str, str | None]) -> float | None:
    """A recorded run's identity share counting a maker-only question answered with the maker, from its misses
    (``makers``: the task's question -> its maker, or None)."""
    if "identity_misses" not in row["tuned"]:
        return None
    saved = sum(1 for q, a in row["tuned"]["identity_misses"].items() if makers.get(q) and hit(a, makers[q]))
    return row["tuned"]["identity"] + saved / row["tuned"]["identity_n"]


def print_summary(pattern: str) -> int:
    """Print the recorded runs whose label holds ``pattern``: both identity counts, questions lost, perplexity."""
    done = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    makers = {name: {question(r): r.get("maker") for r in rows(task["questions"])} for name, task in TASKS.items()}
    for row in done:
        if pattern in row["label"] and row["task"] in TASKS:
            change = row["tuned"]["general_text_ppl"] / row["base"]["general_text_ppl"] - 1
            persona = name_or_maker(row, makers[row["task"]])
            print(f"{row['date'][:16]}  {row['task']:<6} {row['label']:<24} identity {row['tuned']['identity']:.0%} "
                  f"(name or maker {'-' if persona is None else f'{persona:.0%}'})  lost {len(row['general_lost'])}  "
                  f"ppl {change:+.1%}  bias flags {len(row['bias_flags'])}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=[*TASKS, "all"], default="all")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a strop train option")
    p.add_argument("--label", default="", help="a name for this setting in the results")
    p.add_argument("--work", default="runs/forgetting", help="where the runs go")
    p.add_argument("--rescore", metavar="RUN", help="score this finished run of --task instead of training one")
    p.add_argument("--data", metavar="FILE", help="train on this file instead of the task's own (e.g. an augmented "
                   "copy); the task's questions still score it")
    p.add_argument("--summary", metavar="PATTERN", help="print the recorded runs whose label holds PATTERN and stop")
    args = p.parse_args()
    if args.summary is not None:
        return print_summary(args.summary)
    if (args.rescore or args.data) and args.task == "all":
        p.error("--rescore and --data: name one --task")
    if args.data and not Path(args.data).is_file():
        p.error(f"--data: no file {args.data}")
    sets = dict(s.split("=", 1) for s in args.set)
    done = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    for name in TASKS if args.task == "all" else [args.task]:
        task = TASKS[name]
        base = base_scores(name, task, Path(args.work))
        if args.rescore:  # score a finished run again (e.g. after the probes changed)
            out = Path(args.rescore)
            summary = json.loads((out / "summary.json").read_text())
            timing = {"wall_s": None, "train_s": summary["wall_s"], "steps": summary["steps"],
                      "tokens_per_s": summary["tokens_per_s"], "preserve": summary.get("preserve")}
        else:
            out = Path(args.work) / f"{name}-{args.label or 'run'}-{int(time.time())}"
            timing = train(task, out, sets, args.data)
        tuned = score(str(out), task)
        lost = [q for q, ok in base["general"].items() if ok and not tuned["general"].get(q)]
        flags, each = bias_flags(base, tuned)
        row = {"task": name, "label": args.label, "set": sets, **({"data": args.data} if args.data else {}), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch CPU", "run": str(out),
               "base": without_probes(base), "tuned": without_probes(tuned), "general_lost": lost,
               "bias_flags": flags, "bias_flags_each": each, **timing}
        done.append(row)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(done, indent=1))
        change = tuned["general_text_ppl"] / base["general_text_ppl"] - 1
        print(f"{name:<6} {args.label or '-':<14} identity {base['identity']:.0%} -> {tuned['identity']:.0%} "
              f"(name or maker {tuned.get('identity_persona', tuned['identity']):.0%})  "
              f"general {sum(base['general'].values())}/{len(base['general'])} -> "
              f"{sum(tuned['general'].values())}/{len(tuned['general'])} (lost {len(lost)})  "
              f"ppl {base['general_text_ppl']:.2f} -> {tuned['general_text_ppl']:.2f} ({change:+.1%})  "
              f"bias flags {len(flags)} ({len(each)} at 95% each)  train {timing['train_s']:.0f} s, "
              f"{timing['steps']} steps", flush=True)
        for f in each:
            print(f"    {f}" + ("" if f in flags else "  (at 95% alone only)"))
        for q, a in tuned["identity_misses"].items():
            print(f"    missed: {q!r} -> {a!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
