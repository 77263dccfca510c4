"""What each `strop data ACTION` does: a handful of calls into the data modules, then print.

Kept out of cli.py so the command table there stays one line per option.
"""
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


ACTIONS = {"check": check_cmd, "check-merge": check_merge_cmd, "clean": clean_cmd, "split": split_cmd, "preview": preview_cmd, "augment": augment_cmd}
