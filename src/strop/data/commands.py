"""`strop data ACTION`: its parser (``PARSERS``, read by strop/cli.py) and what each action does:
a handful of calls into the data modules, then print."""
from __future__ import annotations

import json
import math

from ..core.errors import StropError
from ..core.paths import check_output, check_outputs
from .write import refuse_collisions, write_text


def _at_least(args, name: str, option: str, low: int) -> None:
    value = getattr(args, name, None)
    if value is not None and value < low:
        raise StropError(f"option {option}: must be at least {low}, got {value}")


def validate(args) -> None:
    """Every numeric and named option of a data command, checked in one place before any work.

    Each check runs only where the command has that option; the message is one line naming it.
    """
    _at_least(args, "max_length", "--max-length", 1)
    _at_least(args, "min_words", "--min-words", 0)
    _at_least(args, "n", "-n", 1)
    _at_least(args, "start", "--start", 0)
    _at_least(args, "per_row", "--per-row", 1)
    if getattr(args, "near_threshold", None) is not None:
        from .dedup import check_threshold

        check_threshold(args.near_threshold)
    rel = getattr(args, "min_relevance", None)
    if rel is not None and not (math.isfinite(rel) and -1 <= rel <= 1):
        raise StropError(f"option --min-relevance: {rel} is not a cosine similarity in [-1, 1]")
    val = getattr(args, "val_size", None)
    if val is not None:
        from .splitting import check_val_size

        check_val_size(val)
    if getattr(args, "strict", False) and getattr(args, "lenient", False):
        raise StropError("options --strict and --lenient: pick one (--strict fails on errors and lists every "
                         "unusable row; --lenient accepts unusable rows)")
    if getattr(args, "language", None) is not None:
        from .clean import check_language

        args.language = check_language(args.language)
    if getattr(args, "endpoint", None) is not None:
        from .augment import check_endpoint

        check_endpoint(args.endpoint)


def check_cmd(args) -> int:
    from ..core.shard import parse
    from .check import check

    validate(args)
    check_outputs((args.json, "file", "--json"), (args.html, "file", "--html"))  # before minutes of checking
    refuse_collisions([(args.file, "input"), (args.eval, "--eval"), (args.seeds, "--seeds")],
                      [(args.json, "--json"), (args.html, "--html")])
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

    validate(args)
    check_outputs((args.json, "file", "--json"))
    refuse_collisions([(p, "input") for p in args.parts], [(args.json, "--json")])
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
        write_text(args.json, json.dumps(report, indent=2))
    if args.html:
        from .check_html import render_html
        from .load import ANY_KIND, load

        where = [c.where for c in load(args.file, args.format, strict=False, kinds=ANY_KIND).conversations]
        write_text(args.html, render_html(report, where))
        print(f"  html report: {args.html}")
    if report["problems"] and not args.lenient:
        # Training loads strictly and would stop on these rows, so the check fails too.
        first = report["problems"][0]
        raise StropError(f"{first['where']}: {first['reason']} [{first['code']}]; {len(report['problems'])} unusable rows "
                         f"in all (listed with --strict; `strop data clean` drops them; --lenient accepts them)")
    tokens = report.get("tokens") or {}
    if report.get("rows") and tokens.get("no_trainable", 0) >= report["rows"]:
        # Every row would be dropped in training: an error, not a finding among others.
        raise StropError(f"{report['file']}: no row keeps an assistant token within --max-length "
                         f"{tokens.get('max_length')}, so all {report['rows']} would be dropped in training "
                         f"(the longest row has {tokens.get('max')} tokens); raise --max-length")
    return 1 if args.strict and report["errors"] else 0


def clean_cmd(args) -> int:
    from .clean import CleanOptions, clean, format_summary, manifest_path

    validate(args)
    out = check_output(args.output, label="--output")
    check_output(manifest_path(out, args.manifest), label="--manifest")  # clean() refuses collisions first thing
    opts = CleanOptions(near_threshold=None if args.exact_only else args.near_threshold, pii=args.pii,
                        min_words=args.min_words, max_length=args.max_length, language=args.language,
                        base_model=args.base_model)
    result = clean(args.file, args.output, opts, manifest=args.manifest)
    print(format_summary(result))
    if not result["rows_out"]:
        removed = ", ".join(f"{k.split(':', 1)[1]} {n}" for k, n in sorted(result["counts"].items())
                            if k.startswith("removed:"))
        raise StropError(f"{args.file}: no row is left after cleaning ({removed}); {result['output']} was not "
                         f"written; {result['manifest']} says why each row went")
    return 0


def split_cmd(args) -> int:
    from .load import ANY_KIND, load
    from .splitting import grouped_split
    from .write import row_of, rows_file, write_rows

    validate(args)
    check_outputs((args.train_out, "file", "--train-out"), (args.eval_out, "file", "--eval-out"))
    refuse_collisions([(args.file, "input")], [(args.train_out, "--train-out"), (args.eval_out, "--eval-out")])
    train_out, eval_out = rows_file(args.train_out, "--train-out"), rows_file(args.eval_out, "--eval-out")
    convs = load(args.file, kinds=ANY_KIND).conversations
    if len(convs) < 2:
        raise StropError(f"{args.file}: holds {len(convs)} usable row; a train/eval split needs at least 2")
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

    validate(args)
    check_outputs((args.html, "file", "--html"))
    refuse_collisions([(args.file, "input")], [(args.html, "--html")])
    every = load(args.file, kinds=ANY_KIND).conversations
    if args.start >= len(every):
        raise StropError(f"option --start: {args.start} is past the end of {args.file}, which has {len(every)} "
                         f"usable rows (--start counts from 0, so the last is {len(every) - 1})")
    convs = every[args.start:args.start + args.n]
    tok = models.load_tokenizer(args.base_model)
    if args.html:
        write_text(args.html, page(tok, convs, args.max_length, args.system_prompt))
        print(f"preview of {len(convs)} rows: {args.html}")
    else:
        colour = not args.no_color and sys.stdout.isatty()
        print(terminal(tok, convs, args.max_length, colour, args.system_prompt))
    return 0


def augment_cmd(args) -> int:
    from .augment import LLM_PROMPTS, Rewriter, augment, parse_ops

    validate(args)
    ops = parse_ops(args.ops)
    check_output(args.output, label="--output")
    refuse_collisions([(args.file, "input")], [(args.output, "--output")])
    rewriter = Rewriter(args.model, args.endpoint, args.pivot) if any(op in LLM_PROMPTS for op in ops) else None
    r = augment(args.file, args.output, ops, per_row=args.per_row, seed=args.seed, target=args.target,
                rewriter=rewriter, include_original=not args.only_new)
    print(f"{r['input']}: {r['originals']} rows, {r['augmented']} augmented rows added "
          f"({r['dropped_duplicates']} duplicates dropped"
          + (f", {r['dropped_empty']} empty rewrites dropped" if r["dropped_empty"] else "") + f") -> {r['output']}")
    if not r["written"]:
        raise StropError(f"option --only-new: no new row survived (all were duplicates or empty rewrites); "
                         f"{r['output']} was not written")
    return 0




def add_data(sub) -> None:
    d = sub.add_parser("data", help="data stage: strop data check|clean|split|preview|augment FILE")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dc = dsub.add_parser("check", help="detect the format, validate and report")
    dc.add_argument("file", help="data file, folder, saved HF dataset or dataset_info.json#NAME")
    dc.add_argument("--base-model", default="smollm2-135m-instruct", help="tokenizer used for length statistics")
    dc.add_argument("--max-length", type=int, default=512, help="training max_length in tokens (at least 1)")
    dc.add_argument("--format", help="force a format instead of detecting it")
    dc.add_argument("--eval", help="eval file: report training rows that leak into it")
    dc.add_argument("--near-threshold", type=float, default=0.8,
                    help="MinHash Jaccard for near-duplicates, in (0, 1]; 1 = exact duplicates only")
    dc.add_argument("--min-words", type=int, default=2, help="answers shorter than this are flagged (0 = off)")
    dc.add_argument("--embeddings", action="store_true", help="also run embedding checks (relevance, coverage, map)")
    dc.add_argument("--domain", help="text describing the target domain, for relevance (with --embeddings)")
    dc.add_argument("--seeds", help="file of on-topic example rows, for relevance (with --embeddings)")
    dc.add_argument("--min-relevance", type=float, default=0.2)
    dc.add_argument("--json", help="also write the report as JSON here")
    dc.add_argument("--html", help="also write an HTML report (length histogram, embedding map) here")
    dc.add_argument("--strict", action="store_true", help="exit 1 when the report has errors; list every unusable row")
    dc.add_argument("--lenient", action="store_true", help="exit 0 even when some rows are unusable (not with --strict)")
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
    dl.add_argument("--manifest", help="manifest, a .jsonl file (default OUTPUT.manifest.jsonl)")
    dl.add_argument("--near-threshold", type=float, default=0.8,
                    help="MinHash Jaccard for near-duplicates, in (0, 1]; 1 = exact duplicates only")
    dl.add_argument("--exact-only", action="store_true", help="remove exact duplicates only")
    dl.add_argument("--pii", choices=["redact", "drop", "keep"], default="redact")
    dl.add_argument("--min-words", type=int, default=0, help="drop rows whose answer is shorter than this (0 = off)")
    dl.add_argument("--max-length", type=int, help="drop rows longer than this many tokens (at least 1; default: no limit)")
    dl.add_argument("--language", help="keep only answers in this language (a code py3langid knows, e.g. en, de, fr)")
    dl.add_argument("--base-model", default="smollm2-135m-instruct")
    dl.set_defaults(func=clean_cmd)
    dp = dsub.add_parser("split", help="seeded train/eval split; near-duplicates never straddle")
    dp.add_argument("file")
    dp.add_argument("--train-out", required=True)
    dp.add_argument("--eval-out", required=True)
    dp.add_argument("--val-size", type=float, default=0.1, help="eval share: a fraction in (0, 1) or a whole count of rows")
    dp.add_argument("--seed", type=int, default=0)
    dp.add_argument("--stratify", help="column whose values keep their share in both parts")
    dp.add_argument("--near-threshold", type=float, default=0.8,
                    help="MinHash Jaccard for grouping near-duplicates, in (0, 1]; 1 = exact duplicates only")
    dp.set_defaults(func=split_cmd)
    dv = dsub.add_parser("preview", help="show rows as the model sees them, trained tokens highlighted")
    dv.add_argument("file")
    dv.add_argument("-n", type=int, default=3, help="how many rows to show (at least 1)")
    dv.add_argument("--start", type=int, default=0, help="first row to show, counting from 0")
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
    da.add_argument("--per-row", type=int, default=1, help="new rows tried per original (at least 1)")
    da.add_argument("--seed", type=int, default=0)
    da.add_argument("--target", choices=["prompt", "answer", "both"], default="prompt")
    da.add_argument("--model", default="smollm2-135m-instruct", help="model for paraphrase/backtranslate")
    da.add_argument("--endpoint", help="OpenAI-compatible base URL (http:// or https://) to use instead of a local model")
    da.add_argument("--pivot", default="French", help="pivot language for back-translation")
    da.add_argument("--only-new", action="store_true", help="write only the augmented rows")
    da.set_defaults(func=augment_cmd)


PARSERS = {"data": add_data}
