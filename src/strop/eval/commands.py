"""`strop eval`: score a run against its base, baselines, forgetting and bias probes.

Each stage owns its commands: ``PARSERS`` adds them to the `strop` parser (strop/cli.py), and the
handlers import their heavy modules only when they run, so `strop --help` stays instant.
"""
from __future__ import annotations

from ..core.errors import StropError
from ..core.pickle_guard import ALLOW_PICKLE_HELP as PICKLE_HELP


def eval_cmd(args) -> int:
    if args.max_new_tokens < 1:  # before any model loads
        raise StropError(f"option --max-new-tokens: must be at least 1, got {args.max_new_tokens}")
    from ..report.html import format_table
    from .preference import describe, is_preference_run
    from .run import evaluate
    from .sweep import parse_scales, sweep_lines

    if is_preference_run(args.model):  # dpo/kto/orpo/simpo/cpo/reward/grpo runs: base vs tuned preference metrics
        if args.scales or args.apply_scale:
            raise StropError("--scales: sweeps SFT runs; a preference run is scored on its pairs, not a task metric")
        from .preference import evaluate_run

        judge = {"endpoint": args.judge_endpoint, "model": args.judge_model, "api_key": args.judge_api_key,
                 "mode": args.judge_mode or "pairwise"} if args.judge_endpoint else None
        print(describe(evaluate_run(args.model, args.data or "", output=args.output, seed=args.seed, judge=judge,
                                      allow_pickle=args.allow_pickle)))
        return 0

    labels = [x for x in args.labels.split(",")] if args.labels else None
    result = evaluate(args.model, args.data, output=args.output, max_new_tokens=args.max_new_tokens,
                      general=args.general, compare_base=not args.no_base, baselines=args.baselines,
                      bias=args.bias, labels=labels, k_shot=args.k_shot, baseline_prompt=args.baseline_prompt,
                      judge_endpoint=args.judge_endpoint, judge_model=args.judge_model,
                      judge_api_key=args.judge_api_key, judge_mode=args.judge_mode or "rubric",
                      group_column=args.group_column, resamples=args.resamples, seed=args.seed,
                      allow_pickle=args.allow_pickle, scales=parse_scales(args.scales) if args.scales else None,
                      forgetting_budget=args.forgetting_budget, apply_scale=args.apply_scale)
    print(format_table(result["systems"]))
    for line in result.get("verdicts", []):
        print(line)
    bias = result.get("bias", {})
    for flag in bias.get("flags", []):
        print(f"bias flag: {flag}")
    for flag in bias.get("flags_each", []):
        if flag not in bias["flags"]:
            print(f"bias note (beyond its own 95% interval, not beyond the run's family-wise threshold): {flag}")
    if "scale_sweep" in result:
        print(sweep_lines(result["scale_sweep"]))
    if "skipped" in result.get("judge", {}):
        print(f"judge SKIPPED: {result['judge']['skipped']}")
    for pair in result.get("judge", {}).get("pairs", []):
        from .pairwise import sentence

        print(sentence(pair))
    print(f"report: {result['output']}/report.html  ({result['eval_wall_s']} s)")
    return 0


def add_eval(sub) -> None:
    e = sub.add_parser("eval", help="perplexity and generation metrics on held-out conversations")
    e.add_argument("model", help="run directory (base vs tuned) or a model")
    e.add_argument("--data", help="held-out conversations (default for a run: its eval_data or validation split)")
    e.add_argument("--general", help="general questions with a 'keyword' field, to check kept ability")
    e.add_argument("--output", help="directory for metrics.json, predictions.jsonl, report.html")
    e.add_argument("--max-new-tokens", type=int, default=64)
    e.add_argument("--no-base", action="store_true", help="with a run directory, skip the base model")
    e.add_argument("--baselines", action="store_true", help="add the base model with a few-shot prompt")
    e.add_argument("--k-shot", type=int, default=4, help="few-shot examples from the training data (default 4)")
    e.add_argument("--baseline-prompt", help="system prompt of the few-shot baseline (default: a generic one)")
    e.add_argument("--bias", action="store_true", help="counterfactual and stereotype-pair bias probes")
    e.add_argument("--labels", help="classification mode: comma-separated label set (or a 'label' column)")
    e.add_argument("--group-column", help="column naming each row's group, for per-group metrics")
    e.add_argument("--judge-endpoint", "--judge", help="OpenAI-compatible base URL (.../v1) for LLM-as-judge grading")
    e.add_argument("--judge-mode", choices=["rubric", "pairwise"],
                   help="rubric: 1-5 grade per answer (default for SFT runs); pairwise: tuned vs base answers, "
                        "position-swapped, win/tie/loss (default for preference runs)")
    e.add_argument("--judge-model", default="judge", help="model name sent to the judge endpoint")
    e.add_argument("--judge-api-key", help="bearer key for the judge endpoint")
    e.add_argument("--scales", nargs="?", const="0.25,0.5,0.75", metavar="LIST",
                   help="LoRA runs: also score the adapter at these scales between base (0) and tuned (1), plot "
                        "task gain against forgetting and choose a scale (default list 0.25,0.5,0.75)")
    e.add_argument("--forgetting-budget", type=float, default=0.05,
                   help="with --scales: the largest general-text perplexity rise the chosen scale may have (0.05 = +5%%)")
    e.add_argument("--apply-scale", action="store_true",
                   help="with --scales: write the chosen scale into the run's adapter (undone by another apply)")
    e.add_argument("--resamples", type=int, default=1000, help="bootstrap / permutation resamples")
    e.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=eval_cmd)


PARSERS = {"eval": add_eval}
