"""`strop data ACTION`: its parser (``PARSERS``, read by strop/cli.py) and what each action does:
a handful of calls into the data modules, then print."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import StropError
from ..core.paths import check_output, check_outputs


def check_cmd(args) -> int:
    from ..core.shard import parse
    from .check import check

    check_outputs((args.json, "file", "--json"), (args.html, "file", "--html"))  # before minutes of checking
    shard = parse(args.shard)
    if shard is not None:  # one part of a fanned-out check (data/check_shards.py)
        if not args.json:
            raise StropError("option --shard: also pass --json PART.json; `strop data check-merge` reads the parts")
        if args.embeddings or args.html:
            raise StropError(f"option --{'embeddings' if args.embeddings else 'html'}: needs every row at once; "
                             "run it without --shard")
    report = check(args.file, base_model=args.base_model, max_length=args.max_length, fmt=args.format,
                   eval_path=args.eval, near_threshold=args.near_threshold, min_words=args.min_words,
                   embeddings=args.embeddings, domain=args.domain, seeds=args.seeds, min_relevance=args.min_relevance,
                   shard=shard)
    return _check_outcome(report, args)


def check_merge_cmd(args) -> int:
    from .check_shards import merge, read_parts

    check_outputs((args.json, "file", "--json"))
    report = merge(read_parts(args.parts))
    args.html = None  # the HTML report needs the rows themselves; run `strop data check --html` for it
    print(f"merged {report['shards']['count']} parts; not exact: {'; '.join(report['shards']['approximate'])}")
    return _check_outcome(report, args)


def _check_outcome(report: dict, args) -> int:
    """Print, write and decide the exit code the same way for a whole check, a part and a merge."""
    from .check import format_report

    print(format_report(report))
    if args.strict:  # every unusable row, not just the first examples
        for p in report["problems"]:
            print(f"  {p['where']}: {p['reason']} [{p['code']}]")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.html:
        from .check_html import render_html
        from .load import ANY_KIND, load

        where = [c.where for c in load(args.file, args.format, strict=False, kinds=ANY_KIND).conversations]
        Path(args.html).write_text(render_html(report, where), encoding="utf-8")
        print(f"  html report: {args.html}")
    if report["problems"] and not args.lenient:
        # Training loads strictly and would stop on these rows, so the check fails too.
        first = report["problems"][0]
        raise StropError(f"{first['where']}: {first['reason']} [{first['code']}]; {len(report['problems'])} unusable rows "
                         f"in all (listed with --strict; `strop data clean` drops them; --lenient accepts them)")
    return 1 if args.strict and report["errors"] else 0


def clean_cmd(args) -> int:
    from .clean import CleanOptions, clean, format_summary

    out = check_output(args.output, label="--output")
    check_output(args.manifest or out.with_name(out.name + ".manifest.jsonl"), label="--manifest")
    opts = CleanOptions(near_threshold=None if args.exact_only else args.near_threshold, pii=args.pii,
                        min_words=args.min_words, max_length=args.max_length, language=args.language,
                        base_model=args.base_model)
    print(format_summary(clean(args.file, args.output, opts, manifest=args.manifest)))
    return 0


def split_cmd(args) -> int:
    from .load import ANY_KIND, load
    from .splitting import grouped_split
    from .write import refuse_overwrite, row_of, write_rows

    check_outputs((args.train_out, "file", "--train-out"), (args.eval_out, "file", "--eval-out"))
    train_out, eval_out = refuse_overwrite(args.train_out, args.file), refuse_overwrite(args.eval_out, args.file)
    convs = load(args.file, kinds=ANY_KIND).conversations
    train, evals = grouped_split(convs, args.val_size, args.seed, args.stratify, args.near_threshold)
    write_rows(train_out, [row_of(c) for c in train])
    write_rows(eval_out, [row_of(c) for c in evals])
    dropped = len(convs) - len(train) - len(evals)
    print(f"{args.file}: {len(train)} train rows -> {train_out}, {len(evals)} eval rows -> {eval_out}"
          + (f"; {dropped} augmented rows of eval originals left out" if dropped else ""))
    return 0


def preview_cmd(args) -> int:
    import sys

    from .. import models
    from .load import ANY_KIND, load
    from .preview import page, terminal

    check_outputs((args.html, "file", "--html"))
    convs = load(args.file, kinds=ANY_KIND).conversations[args.start:args.start + args.n]
    tok = models.load_tokenizer(args.base_model)
    if args.html:
        Path(args.html).write_text(page(tok, convs, args.max_length, args.system_prompt), encoding="utf-8")
        print(f"preview of {len(convs)} rows: {args.html}")
    else:
        colour = not args.no_color and sys.stdout.isatty()
        print(terminal(tok, convs, args.max_length, colour, args.system_prompt))
    return 0


def augment_cmd(args) -> int:
    from .augment import LLM_PROMPTS, Rewriter, augment

    check_output(args.output, label="--output")
    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    rewriter = Rewriter(args.model, args.endpoint, args.pivot) if any(op in LLM_PROMPTS for op in ops) else None
    r = augment(args.file, args.output, ops, per_row=args.per_row, seed=args.seed, target=args.target,
                rewriter=rewriter, include_original=not args.only_new)
    print(f"{r['input']}: {r['originals']} rows, {r['augmented']} augmented rows added "
          f"({r['dropped_duplicates']} duplicates dropped"
          + (f", {r['dropped_empty']} empty rewrites dropped" if r["dropped_empty"] else "") + f") -> {r['output']}")
    return 0




def add_data(sub) -> None:
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
    dc.set_defaults(func=check_cmd)
    dm_ = dsub.add_parser("check-merge", help="one report from the --json parts of `strop data check --shard I/N`")
    dm_.add_argument("parts", nargs="+", help="every part's JSON report")
    dm_.add_argument("--json", help="also write the merged report as JSON here")
    dm_.add_argument("--strict", action="store_true", help="exit 1 when the report has errors")
    dm_.add_argument("--lenient", action="store_true", help="exit 0 even when some rows are unusable")
    dm_.set_defaults(func=check_merge_cmd)
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
    dl.set_defaults(func=clean_cmd)
    dp = dsub.add_parser("split", help="seeded train/eval split; near-duplicates never straddle")
    dp.add_argument("file")
    dp.add_argument("--train-out", required=True)
    dp.add_argument("--eval-out", required=True)
    dp.add_argument("--val-size", type=float, default=0.1, help="fraction (<1) or count")
    dp.add_argument("--seed", type=int, default=0)
    dp.add_argument("--stratify", help="column whose values keep their share in both parts")
    dp.add_argument("--near-threshold", type=float, default=0.8)
    dp.set_defaults(func=split_cmd)
    dv = dsub.add_parser("preview", help="show rows as the model sees them, trained tokens highlighted")
    dv.add_argument("file")
    dv.add_argument("-n", type=int, default=3)
    dv.add_argument("--start", type=int, default=0)
    dv.add_argument("--base-model", default="smollm2-135m-instruct")
    dv.add_argument("--max-length", type=int, default=512)
    dv.add_argument("--system-prompt", default="")
    dv.add_argument("--html", help="write an HTML page instead of printing")
    dv.add_argument("--no-color", action="store_true", help="mark trained text with [[ ]] instead of colour")
    dv.set_defaults(func=preview_cmd)
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
    da.set_defaults(func=augment_cmd)


PARSERS = {"data": add_data}
