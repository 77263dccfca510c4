"""The `strop` command: parse, call one stage function, print.

Heavy libraries are imported inside the command functions so `strop --help`
and option errors are instant.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .core import __version__
from .core.errors import StropError
from .core.logs import quiet_libraries


def cmd_train(args, extra: list[str]) -> int:
    from .core.config import parse_overrides
    from .train.options import load_train_config

    rest = list(args.rest)
    if any(a in ("-h", "--help") for a in rest):
        print(train_help())
        return 0
    config = rest.pop(0) if rest and not rest[0].startswith("--") else None
    from .train.launch import split_launch_options

    launch_opts, overrides = split_launch_options(parse_overrides(rest))
    cfg = load_train_config(config, overrides)
    _check_sources(cfg)
    if launch_opts.wanted:  # --nproc/--nnodes/--distributed: this process becomes the launcher
        from .train.launch import start

        return start(launch_opts, cfg, config, overrides)
    from .train.run import train

    run = train(cfg)
    if cfg.objective != "sft":
        from .train.preference import describe

        print(describe(cfg, run))
        return 0
    from .train.distributed import world

    if not world().is_main:
        return 0  # rank 0 reports for every process
    summary = json.loads(run.summary.read_text())
    print(f"trained {summary['method']} on {cfg.base_model}: {summary['steps']} steps, "
          f"train loss {summary['train_loss']:.4f}, best eval loss {_fmt(summary['best_eval_loss'])}, "
          f"{summary['tokens_per_s']} tokens/s, peak RSS {summary['peak_rss_mb']:.0f} MB")
    if summary.get("world_size", 1) > 1:
        print(f"{summary['world_size']} processes ({summary['distributed']}), effective batch "
              f"{summary['effective_batch_size']} sequences per step; tokens/s counts all processes")
    print(f"run directory: {run.root}  (model in {run.final})")
    return 0


def _check_sources(cfg) -> None:
    """Name a missing or unreadable data file now, not after the training libraries' imports (seconds)."""
    from .data.load import sources

    for value in (cfg.data, cfg.eval_data):
        if value:
            sources(Path(value))  # finds the files and their readers; reads no row


def train_help() -> str:
    import dataclasses

    from .core.config import TrainConfig

    lines = ["usage: strop train [CONFIG.yaml] [--KEY VALUE ...]", "", "keys (YAML name / --option, default):"]
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  {f.name:<30} --{f.name.replace('_', '-'):<32} {default!r}")
    lines += ["", "several processes (docs/distributed.md): --nproc N [--distributed ddp|fsdp|deepspeed-zero2|"
              "deepspeed-zero3|FILE.yaml]", "  multi-node: --nnodes M --node-rank R --main-process-ip IP --main-process-port P"]
    return "\n".join(lines)


def _fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, float) else "n/a"


def cmd_generate(args, extra) -> int:
    from .models.engine import Engine

    engine = Engine(args.model, allow_pickle=args.allow_pickle)
    print(engine.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature))
    return 0


def cmd_chat(args, extra) -> int:
    from .models.engine import Engine

    engine = Engine(args.model, allow_pickle=args.allow_pickle)
    history: list[dict] = []
    print("chatting with", args.model, "- empty line or Ctrl-D to quit, /reset to forget the conversation")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            return 0
        if line == "/reset":
            history.clear()
            continue
        history.append({"role": "user", "content": line})
        print("model> ", end="", flush=True)
        pieces = []
        for piece in engine.stream(history, max_new_tokens=args.max_new_tokens, temperature=args.temperature):
            pieces.append(piece)
            print(piece, end="", flush=True)
        print()
        history.append({"role": "assistant", "content": "".join(pieces)})


def cmd_eval(args, extra) -> int:
    from .eval.preference import describe, is_preference_run
    from .eval.run import evaluate
    from .eval.sweep import parse_scales, sweep_lines
    from .report.html import format_table

    if is_preference_run(args.model):  # dpo/kto/orpo/simpo/cpo/reward/grpo runs: base vs tuned preference metrics
        if args.scales or args.apply_scale:
            raise StropError("--scales: sweeps SFT runs; a preference run is scored on its pairs, not a task metric")
        from .eval.preference import evaluate_run

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
    for flag in result.get("bias", {}).get("flags", []):
        print(f"bias flag: {flag}")
    if "scale_sweep" in result:
        print(sweep_lines(result["scale_sweep"]))
    if "skipped" in result.get("judge", {}):
        print(f"judge SKIPPED: {result['judge']['skipped']}")
    for pair in result.get("judge", {}).get("pairs", []):
        from .eval.pairwise import sentence

        print(sentence(pair))
    print(f"report: {result['output']}/report.html  ({result['eval_wall_s']} s)")
    return 0


def cmd_data(args, extra) -> int:
    from .data.commands import ACTIONS

    return ACTIONS[args.data_command](args)


def cmd_serve(args, extra) -> int:
    import os

    from .http.guard import check_bind
    from .serve.server import run

    key = args.api_key or os.environ.get("STROP_API_KEY")
    check_bind(args.host, key, args.no_auth)  # before the slow model load
    if args.engine == "vllm":
        from .serve.vllm import run_vllm

        return run_vllm(args.model, host=args.host, port=args.port, api_key=key, adapters=args.adapter)
    return run(args.model, host=args.host, port=args.port, api_key=key, adapters=args.adapter,
               max_batch=args.max_batch, max_waiting=args.max_waiting, max_tokens_cap=args.max_tokens_cap,
               drain_timeout=args.drain_timeout, allow_pickle=args.allow_pickle)


def cmd_service(args, extra) -> int:
    import os

    from .http.guard import check_bind
    from .service.app import serve
    from .service.policy import ClientPolicy

    key = args.api_key or os.environ.get("STROP_API_KEY")
    check_bind(args.host, key, args.no_auth)
    policy = ClientPolicy.from_options(args.allow_client_option, args.model_root, args.model_map,
                                       args.allow_python_graders, args.grader_endpoint)
    from .service.webhooks import parse_endpoints

    from .service.launchers import make

    hooks = parse_endpoints(args.webhook, args.webhook_secret or os.environ.get("STROP_WEBHOOK_SECRET"))
    launcher = make(args.launcher, args.slurm_option, args.scheduler_poll_s)
    return serve(args.workdir, host=args.host, port=args.port, api_key=key, concurrency=args.concurrency,
                 max_upload_mb=args.max_upload_mb, studio=args.command == "studio", policy=policy, webhooks=hooks,
                 launcher=launcher)


def cmd_export(args, extra) -> int:
    from .export import export

    from .export.verify import summary

    report = export(args.run, args.format, args.output, quant=args.quant, dtype=args.dtype, n_prompts=args.prompts,
                    min_greedy=args.min_greedy)  # exit 5, one line, when the export fails verification
    v = report["verification"]
    print(f"exported {args.run} as {args.format} to {report['output']}")
    print(f"verified on {v['prompts']} held-out prompts ({v['greedy_tokens']} greedy tokens each): {summary(v)}")
    return 0


def cmd_models(args, extra) -> int:
    from . import models

    if args.action == "path":
        if not args.alias:
            raise StropError("usage: strop models path ALIAS")
        path = models.resolve(args.alias)
        if not isinstance(path, Path):  # resolve passes an unknown name on as a hub id
            known = ", ".join(sorted(models.ALIASES))
            raise StropError(f"{args.alias}: not a built-in alias, model directory, run or .gguf file "
                             f"(aliases: {known})")
        print(path)
        return 0
    for row in models.describe():
        state = "cached" if row["cached"] else "not yet converted"
        print(f"{row['alias']:<26} {row['license']:<12} {state:<18} {row['path']}")
    return 0


def cmd_demo(args, extra) -> int:
    from .demo import run_demo

    return run_demo(args.output_dir, epochs=args.num_epochs)


def cmd_compare(args, extra) -> int:
    from .compare import compare, markdown_table, parse_methods

    names = parse_methods(args.methods)
    result = compare(args.data, names, args.output, base_model=args.base_model, max_steps=args.max_steps,
                     val_size=args.val_size, seed=args.seed)
    print(markdown_table(result["rows"]))
    print(f"table and plot: {args.output}/compare.md, compare.json, compare.png")
    return 0


def cmd_plan(args, extra) -> int:
    from .core.config import parse_overrides
    from .train.options import load_train_config
    from .plan.estimate import format_plan, make_plan, split_options

    rest = list(args.rest)
    if any(a in ("-h", "--help") for a in rest):
        print("usage: strop plan [CONFIG.yaml] [--KEY VALUE ...] [--device cpu|cuda|cuda:NAME] [--json OUT]\n"
              "       [--price-per-hour P] [--utilisation U] [--optim adamw|adamw_8bit|paged_adamw_8bit]\n"
              "       [--measure [--measure-steps N]] [--goal knowledge]   (config keys: strop train --help)\n"
              "       [--nproc N --distributed ddp|fsdp|deepspeed-zero2|deepspeed-zero3]   (memory per device)\n"
              "       without --data: the worst case (every row at --max-length), time for --rows N (default 1000)")
        return 0
    config = rest.pop(0) if rest and not rest[0].startswith("--") else None
    opts, overrides = split_options(parse_overrides(rest))
    if opts.get("json"):
        from .core.paths import check_output

        check_output(opts["json"], label="--json")  # before --measure trains for a while
    plan = make_plan(load_train_config(config, overrides), opts)
    print(format_plan(plan))
    if opts.get("json"):
        with open(opts["json"], "w") as fh:
            json.dump(plan, fh, indent=2)
    return 0


def cmd_license(args, extra) -> int:
    from .plan.license import check, format_check

    result = check(args.model, data=args.data or [], use=args.use)
    print(format_check(result))
    return 1 if result["verdict"] == "not allowed" else 0


def cmd_env(args, extra) -> int:
    from .plan.env import collect, format_env

    facts = collect()
    print(json.dumps(facts, indent=2) if args.json else format_env(facts))
    return 0


def cmd_al(args, extra) -> int:
    from .active.commands import ACTIONS

    return ACTIONS[args.al_action](args)


PICKLE_HELP = "load .bin/.pt weights (pickle; read with weights_only=True) when no safetensors exist"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="strop", description="Fine-tune, evaluate and serve language models.",
                                epilog="Any command also takes --threads auto|N|fixed: CPU threads, by default sized to "
                                       "the cores other programs leave free (STROP_THREADS; docs/performance.md).")
    p.add_argument("--version", action="version", version=f"strop {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="fine-tune a model: strop train [CONFIG.yaml] [--KEY VALUE ...]",
                       description="Every config key is also an option, e.g. --base-model, --data, --method, --num-epochs.")
    t.add_argument("rest", nargs=argparse.REMAINDER, help="[CONFIG.yaml] [--KEY VALUE ...]")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="answer one prompt with a model or run")
    g.add_argument("model", help="run directory, model directory, .gguf file or alias")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="interactive chat in the terminal")
    c.add_argument("model")
    c.add_argument("--max-new-tokens", type=int, default=256)
    c.add_argument("--temperature", type=float, default=0.0)
    c.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    c.set_defaults(func=cmd_chat)

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
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("data", help="data stage: strop data check|clean|split|preview|augment FILE")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dc = dsub.add_parser("check", help="detect the format, validate and report")
    dc.add_argument("file", help="data file, folder, saved HF dataset or dataset_info.json#NAME")
    dc.add_argument("--base-model", default="smollm2-135m-instruct", help="tokenizer used for length statistics")
    dc.add_argument("--max-length", type=int, default=512)
    dc.add_argument("--format", help="force a format instead of detecting it")
    dc.add_argument("--eval", help="eval file: report training rows that leak into it")
    dc.add_argument("--near-threshold", type=float, default=0.8, help="MinHash Jaccard for near-duplicates")
    dc.add_argument("--min-words", type=int, default=2, help="answers shorter than this are flagged")
    dc.add_argument("--embeddings", action="store_true", help="also run embedding checks (relevance, coverage, map)")
    dc.add_argument("--domain", help="text describing the target domain, for relevance (with --embeddings)")
    dc.add_argument("--seeds", help="file of on-topic example rows, for relevance (with --embeddings)")
    dc.add_argument("--min-relevance", type=float, default=0.2)
    dc.add_argument("--json", help="also write the report as JSON here")
    dc.add_argument("--html", help="also write an HTML report (length histogram, embedding map) here")
    dc.add_argument("--strict", action="store_true", help="exit 1 when the report has errors; list every unusable row")
    dc.add_argument("--lenient", action="store_true", help="exit 0 even when some rows are unusable")
    dc.add_argument("--shard", metavar="I/N", help="check only part I of N (0-based; with --json), for check-merge")
    dc.set_defaults(func=cmd_data)
    dm_ = dsub.add_parser("check-merge", help="one report from the --json parts of `strop data check --shard I/N`")
    dm_.add_argument("parts", nargs="+", help="every part's JSON report")
    dm_.add_argument("--json", help="also write the merged report as JSON here")
    dm_.add_argument("--strict", action="store_true", help="exit 1 when the report has errors")
    dm_.add_argument("--lenient", action="store_true", help="exit 0 even when some rows are unusable")
    dm_.set_defaults(func=cmd_data)
    dl = dsub.add_parser("clean", help="dedup, redact/drop PII, filter; writes the output plus a manifest")
    dl.add_argument("file")
    dl.add_argument("--output", required=True, help="cleaned file (.jsonl or .json); the input is never changed")
    dl.add_argument("--manifest", help="manifest JSONL (default OUTPUT.manifest.jsonl)")
    dl.add_argument("--near-threshold", type=float, default=0.8)
    dl.add_argument("--exact-only", action="store_true", help="remove exact duplicates only")
    dl.add_argument("--pii", choices=["redact", "drop", "keep"], default="redact")
    dl.add_argument("--min-words", type=int, default=0, help="drop rows whose answer is shorter than this")
    dl.add_argument("--max-length", type=int, help="drop rows longer than this many tokens")
    dl.add_argument("--language", help="keep only answers in this language (ISO code, e.g. en)")
    dl.add_argument("--base-model", default="smollm2-135m-instruct")
    dl.set_defaults(func=cmd_data)
    dp = dsub.add_parser("split", help="seeded train/eval split; near-duplicates never straddle")
    dp.add_argument("file")
    dp.add_argument("--train-out", required=True)
    dp.add_argument("--eval-out", required=True)
    dp.add_argument("--val-size", type=float, default=0.1, help="fraction (<1) or count")
    dp.add_argument("--seed", type=int, default=0)
    dp.add_argument("--stratify", help="column whose values keep their share in both parts")
    dp.add_argument("--near-threshold", type=float, default=0.8)
    dp.set_defaults(func=cmd_data)
    dv = dsub.add_parser("preview", help="show rows as the model sees them, trained tokens highlighted")
    dv.add_argument("file")
    dv.add_argument("-n", type=int, default=3)
    dv.add_argument("--start", type=int, default=0)
    dv.add_argument("--base-model", default="smollm2-135m-instruct")
    dv.add_argument("--max-length", type=int, default=512)
    dv.add_argument("--system-prompt", default="")
    dv.add_argument("--html", help="write an HTML page instead of printing")
    dv.add_argument("--no-color", action="store_true", help="mark trained text with [[ ]] instead of colour")
    dv.set_defaults(func=cmd_data)
    da = dsub.add_parser("augment", help="add augmented prompts (word ops, synonyms, LLM paraphrase)")
    da.add_argument("file")
    da.add_argument("--output", required=True)
    da.add_argument("--ops", default="synonym,swap,delete", help="comma list: delete,swap,insert,synonym,paraphrase,backtranslate")
    da.add_argument("--per-row", type=int, default=1)
    da.add_argument("--seed", type=int, default=0)
    da.add_argument("--target", choices=["prompt", "answer", "both"], default="prompt")
    da.add_argument("--model", default="smollm2-135m-instruct", help="model for paraphrase/backtranslate")
    da.add_argument("--endpoint", help="OpenAI-compatible base URL to use instead of a local model")
    da.add_argument("--pivot", default="French", help="pivot language for back-translation")
    da.add_argument("--only-new", action="store_true", help="write only the augmented rows")
    da.set_defaults(func=cmd_data)

    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    s.add_argument("model")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", help="require this bearer key (or set STROP_API_KEY)")
    s.add_argument("--no-auth", action="store_true",
                   help="allow a non-loopback --host without an API key (anyone who can reach it can use it)")
    s.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                   help="also serve this adapter (run or adapter directory) over the same base, as model NAME")
    s.add_argument("--max-batch", type=int, default=8, help="requests decoded together")
    s.add_argument("--max-waiting", type=int, default=64, help="queued requests before answering 429")
    s.add_argument("--max-tokens-cap", type=int, default=2048)
    s.add_argument("--drain-timeout", type=float, default=30.0, help="seconds SIGTERM waits for in-flight requests")
    s.add_argument("--engine", choices=["strop", "vllm"], default="strop", help="vllm: hand off to vLLM (GPU)")
    s.add_argument("--allow-pickle", action="store_true",
                   help="load .bin/.pt weights (pickle; read with weights_only=True) when no safetensors exist")
    s.set_defaults(func=cmd_serve)

    for name, text in (("service", "fine-tuning as a service: OpenAI files + fine_tuning.jobs API, serving and studio"),
                       ("studio", "the web studio (runs, compare, data, playground, new job) on the same service")):
        sv = sub.add_parser(name, help=text)
        sv.add_argument("--host", default="127.0.0.1")
        sv.add_argument("--port", type=int, default=8000)
        sv.add_argument("--workdir", default="strop-service", help="where the job store, uploads and runs live")
        sv.add_argument("--api-key", help="require this bearer key for the API and the studio (or set STROP_API_KEY)")
        sv.add_argument("--concurrency", type=int, default=1, help="jobs trained at the same time")
        sv.add_argument("--max-upload-mb", type=float, default=512, help="largest accepted upload")
        sv.add_argument("--no-auth", action="store_true",
                        help="allow a non-loopback --host without an API key (anyone who can reach it can use it)")
        sv.add_argument("--model-root", metavar="DIR",
                        help="local model directories under DIR may be named by API clients (default: aliases only)")
        sv.add_argument("--allow-client-option", action="append", default=[], metavar="NAME",
                        help="let API clients set this option, which can run code or reach host paths "
                             "(trust_remote_code, model_revision, allow_pickle, reward_funcs, reward_model, report_to); "
                             "repeatable")
        sv.add_argument("--model-map", action="append", default=[], metavar="NAME=MODEL",
                        help="train and serve MODEL (an alias or model directory) when a client asks for NAME, "
                             "e.g. gpt-4o-mini-2024-07-18=smollm2-135m-instruct; repeatable (docs/migrate-from-openai.md)")
        sv.add_argument("--allow-python-graders", action="store_true",
                        help="accept reinforcement jobs whose grader is client Python, run in a sandbox with no "
                             "network and no view of the service's files (docs/graders.md)")
        sv.add_argument("--grader-endpoint", metavar="URL",
                        help="OpenAI-compatible base URL that score_model/label_model graders call "
                             "(key from STROP_GRADER_API_KEY)")
        sv.add_argument("--launcher", default="local", metavar="local|slurm",
                        help="where jobs train: child processes here (local), or batch jobs through Slurm's "
                             "sbatch/squeue/scancel, the workdir on a filesystem the nodes share (slurm)")
        sv.add_argument("--slurm-option", action="append", default=[], metavar="OPTION",
                        help="an sbatch option for every job, e.g. --slurm-option=--partition=gpu "
                             "--slurm-option=--gres=gpu:1; repeatable")
        sv.add_argument("--scheduler-poll-s", type=float, default=10.0, metavar="S",
                        help="ask the scheduler about each running job at most every S seconds (default 10)")
        sv.add_argument("--webhook", action="append", default=[], metavar="URL",
                        help="POST a signed OpenAI-style event here when a job succeeds, fails or is cancelled; "
                             "repeatable (docs/webhooks.md)")
        sv.add_argument("--webhook-secret", metavar="WHSEC",
                        help="the whsec_... secret events are signed with (or set STROP_WEBHOOK_SECRET)")
        sv.set_defaults(func=cmd_service)

    x = sub.add_parser("export", help="merge adapters / write GGUF, verified against the run")
    x.add_argument("run", help="run directory")
    x.add_argument("--format", choices=["merged", "gguf"], default="merged")
    x.add_argument("--output", help="output directory (default RUN/export/FORMAT)")
    x.add_argument("--quant", choices=["f16", "q8_0", "q4_1"], default="q8_0", help="GGUF tensor type")
    x.add_argument("--dtype", help="merged weights dtype (default: the base model's own)")
    x.add_argument("--prompts", type=int, default=8, help="held-out prompts to verify on")
    x.add_argument("--min-greedy", type=float, default=0.5, metavar="FRACTION",
                   help="fail (exit 5) unless greedy output equals the tuned model's on this share of prompts")
    x.set_defaults(func=cmd_export)

    m = sub.add_parser("models", help="built-in model aliases; `strop models path ALIAS` prints the local directory")
    m.add_argument("action", nargs="?", choices=["list", "path"], default="list")
    m.add_argument("alias", nargs="?")
    m.set_defaults(func=cmd_models)

    dm = sub.add_parser("demo", help="the main job on the built-in default model")
    dm.add_argument("--output-dir", default="runs/demo")
    dm.add_argument("--num-epochs", type=float, default=5.0)
    dm.set_defaults(func=cmd_demo)

    cp = sub.add_parser("compare", help="train several methods on one split and step budget; table + plot")
    cp.add_argument("--data", required=True, help="conversations; a seeded held-out part is split off")
    cp.add_argument("--methods", default="lora,dora,ia3,prompt_tuning,adapter,full", help="comma-separated")
    cp.add_argument("--max-steps", type=int, default=30, help="the same step budget for every method")
    cp.add_argument("--output", default="runs/compare", help="a new or empty directory")
    cp.add_argument("--base-model", default="smollm2-135m-instruct")
    cp.add_argument("--val-size", type=float, default=0.1)
    cp.add_argument("--seed", type=int, default=42)
    cp.set_defaults(func=cmd_compare)

    pl = sub.add_parser("plan", help="memory, fit, time, cost and method advice before training (no weights loaded)")
    pl.add_argument("rest", nargs=argparse.REMAINDER, help="[CONFIG.yaml] [--KEY VALUE ...] [--device D] [--json OUT]")
    pl.set_defaults(func=cmd_plan)

    li = sub.add_parser("license", help="licenses a model, run or dataset carries, and what they allow")
    li.add_argument("model", help="alias, model directory, .gguf file or run directory")
    li.add_argument("--data", action="append", help="a dataset file or directory (repeatable)")
    li.add_argument("--use", choices=["commercial", "research"], default="commercial")
    li.set_defaults(func=cmd_license)

    en = sub.add_parser("env", help="what strop will use here: CPU features, GPU, library versions")
    en.add_argument("--json", action="store_true", help="print the facts as JSON")
    en.set_defaults(func=cmd_env)

    al = sub.add_parser("al", help="active learning: score a pool, select what to label, merge labels, oracle loop")
    alsub = al.add_subparsers(dest="al_action", required=True, metavar="ACTION")
    a = alsub.add_parser("score", help="uncertainty signals + embeddings for every pool input")
    a.add_argument("--model", required=True, help="run directory, model directory, .gguf file or alias")
    a.add_argument("--pool", required=True, help="unlabelled inputs (JSONL/CSV rows with id + prompt)")
    a.add_argument("--output", required=True, help="new directory for the scores")
    a.add_argument("--labels", help="comma-separated candidate answers (classification): adds the top-two margin")
    a.add_argument("--train", help="training file: pool inputs already in it are dropped, its inputs count as labelled")
    a.add_argument("--samples", type=int, default=3, help="sampled answers per input for disagreement (0 = off)")
    a.add_argument("--max-new-tokens", type=int, default=32)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--shard", metavar="I/N", help="score only part I of N of the pool (0-based), for score-merge")
    a = alsub.add_parser("score-merge", help="one scores directory from the parts of `strop al score --shard I/N`")
    a.add_argument("parts", nargs="+", help="every part's scores directory")
    a.add_argument("--output", required=True, help="new directory for the merged scores")
    a = alsub.add_parser("select", help="pick the next items to label; writes FILE.jsonl + FILE.csv")
    a.add_argument("--scores", required=True, help="directory written by `strop al score`")
    a.add_argument("--budget", type=int, required=True, help="how many items to pick")
    a.add_argument("--strategy", default="hybrid", choices=["uncertainty", "diversity", "hybrid", "random"])
    a.add_argument("--signal", help="uncertainty column (default: margin with --labels, else entropy_mean)")
    a.add_argument("--dedup", type=float, default=0.95, help="skip inputs at this cosine similarity to labelled ones")
    a.add_argument("--output", required=True, help="labelling file (FILE.csv and FILE.jsonl are written)")
    a.add_argument("--seed", type=int, default=0)
    a = alsub.add_parser("merge", help="validate labelled rows and append them to a training file")
    a.add_argument("labelled", help="the labelled CSV (or JSONL) from `strop al select`")
    a.add_argument("--into", required=True, help="training JSONL to append to (created if missing)")
    a.add_argument("--selection", help="the selection JSONL (default: LABELLED with .jsonl)")
    a.add_argument("--skip-unlabelled", action="store_true", help="merge the labelled rows, skip the rest")
    a = alsub.add_parser("loop", help="oracle experiment: select -> reveal -> retrain -> eval per strategy")
    a.add_argument("--config", required=True, help="loop YAML (pool, eval, learner, strategies, seeds ...)")
    a.add_argument("--rounds", type=int)
    a.add_argument("--budget", type=int)
    a.add_argument("--output-dir")
    al.set_defaults(func=cmd_al)
    return p


def _take_threads(argv: list[str]) -> list[str]:
    """``--threads N|auto|fixed`` may follow any command; it becomes STROP_THREADS (strop/threads.py)."""
    import os

    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--threads" and i + 1 < len(argv):
            os.environ["STROP_THREADS"], i = argv[i + 1], i + 2
        elif argv[i].startswith("--threads="):
            os.environ["STROP_THREADS"], i = argv[i].split("=", 1)[1], i + 1
        else:
            out.append(argv[i])
            i += 1
    return out


THREADED_COMMANDS = ("generate", "chat", "eval", "serve")  # training sizes its pool between steps instead


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = _take_threads(sys.argv[1:] if argv is None else list(argv))
    if argv[:1] == ["train"]:
        # argparse cannot hand free-form --key value pairs to a subcommand, so
        # `train` takes its arguments raw; every config key is an option.
        args, extra = argparse.Namespace(func=cmd_train, rest=argv[1:]), []
    elif argv[:1] == ["plan"]:
        args, extra = argparse.Namespace(func=cmd_plan, rest=argv[1:]), []  # same free-form keys as train
    else:
        args, extra = parser.parse_known_args(argv)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    quiet_libraries()
    try:
        from .core import threads

        threads.policy()  # a bad --threads / STROP_THREADS stops here, in one line
        if getattr(args, "command", None) in THREADED_COMMANDS:
            threads.configure_once()
        return args.func(args, extra)
    except StropError as exc:
        from .train.launch import report_in_child

        if not report_in_child(exc):  # a launched rank other than 0 leaves the message to rank 0 / the launcher
            print(f"strop: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("strop: interrupted", file=sys.stderr)
        return 130
