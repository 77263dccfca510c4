"""`strop al ACTION`: its parser (``PARSERS``, read by strop/cli.py) and what each action does
between parsing and printing."""
from __future__ import annotations

import sys

from ..core.paths import check_output


def warn(message: str) -> None:
    print(f"strop: {message}", file=sys.stderr)


def score(args) -> int:
    from ..core.shard import parse
    from .score import score_pool

    check_output(args.output, kind="dir", label="--output")  # before the model loads and the pool is scored
    labels = [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None
    table = score_pool(args.model, args.pool, args.output, labels=labels, train=args.train, samples=args.samples,
                       max_new_tokens=args.max_new_tokens, seed=args.seed, warn=warn, shard=parse(args.shard))
    print(f"scored {len(table)} pool inputs with {args.model}: signals {', '.join(table.signals)}; "
          f"embeddings {tuple(table.embeddings.shape)}; written to {args.output}")
    return 0


def select(args) -> int:
    from .score import load_scores
    from .select import output_paths, uncertainty, write_selection
    from .select import select as pick

    for path in output_paths(args.output):
        check_output(path, label="--output")
    table = load_scores(args.scores)
    picked, unc = pick(table, args.budget, args.strategy, signal=args.signal, seed=args.seed,
                       dedup=args.dedup, warn=warn)
    jsonl, csv_path = write_selection(table, picked, unc, args.output, args.strategy)
    signal = uncertainty(table, args.signal)[0] if table.signals else "none"
    print(f"selected {len(picked)} of {len(table)} items by {args.strategy} (uncertainty signal: {signal})")
    print(f"label them in {csv_path}: correct the pre-filled 'answer', set 'reviewed' to yes; "
          f"then: strop al merge {csv_path} --into TRAIN.jsonl")
    print(f"(the selection record is {jsonl}; keep it next to the CSV)")
    return 0


def merge(args) -> int:
    from .merge import merge as do_merge

    check_output(args.into, label="--into")
    r = do_merge(args.labelled, args.into, selection=args.selection, skip_unlabelled=args.skip_unlabelled, warn=warn)
    print(f"merged {r.merged} labelled rows into {r.into} ({r.corrected} corrected drafts, {r.accepted} accepted "
          f"as drafted); skipped {len(r.unlabelled)} unlabelled, {r.already_present} already present; "
          f"{r.into} now has {r.total_rows} rows")
    return 0


def loop(args) -> int:
    from .curves import format_summary
    from .loop import load_loop_config, run_loop

    cfg = load_loop_config(args.config, {"rounds": args.rounds, "budget": args.budget, "output_dir": args.output_dir})
    check_output(cfg.output_dir, kind="dir", label="--output-dir")
    result = run_loop(cfg)
    print(format_summary(result["summary"]))
    print(f"curves: {cfg.output_dir}/curves.json  plot: {result['plot']}")
    return 0


def score_merge(args) -> int:
    from .shards import merge_scores

    check_output(args.output, kind="dir", label="--output")
    table = merge_scores(args.parts, args.output)
    print(f"merged {table.meta['merged_parts']} parts: {len(table)} pool inputs, signals {', '.join(table.signals)}; "
          f"written to {args.output}")
    return 0




def add_al(sub) -> None:
    al = sub.add_parser("al", help="active learning: score a pool, select what to label, merge labels, oracle loop")
    alsub = al.add_subparsers(dest="al_action", required=True, metavar="ACTION")
    a = alsub.add_parser("score", help="uncertainty signals + embeddings for every pool input")
    a.set_defaults(func=score)
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
    a.set_defaults(func=score_merge)
    a.add_argument("parts", nargs="+", help="every part's scores directory")
    a.add_argument("--output", required=True, help="new directory for the merged scores")
    a = alsub.add_parser("select", help="pick the next items to label; writes FILE.jsonl + FILE.csv")
    a.set_defaults(func=select)
    a.add_argument("--scores", required=True, help="directory written by `strop al score`")
    a.add_argument("--budget", type=int, required=True, help="how many items to pick")
    a.add_argument("--strategy", default="hybrid", choices=["uncertainty", "diversity", "hybrid", "random"])
    a.add_argument("--signal", help="uncertainty column (default: margin with --labels, else entropy_mean)")
    a.add_argument("--dedup", type=float, default=0.95, help="skip inputs at this cosine similarity to labelled ones")
    a.add_argument("--output", required=True, help="labelling file (FILE.csv and FILE.jsonl are written)")
    a.add_argument("--seed", type=int, default=0)
    a = alsub.add_parser("merge", help="validate labelled rows and append them to a training file")
    a.set_defaults(func=merge)
    a.add_argument("labelled", help="the labelled CSV (or JSONL) from `strop al select`")
    a.add_argument("--into", required=True, help="training JSONL to append to (created if missing)")
    a.add_argument("--selection", help="the selection JSONL (default: LABELLED with .jsonl)")
    a.add_argument("--skip-unlabelled", action="store_true", help="merge the labelled rows, skip the rest")
    a = alsub.add_parser("loop", help="oracle experiment: select -> reveal -> retrain -> eval per strategy")
    a.set_defaults(func=loop)
    a.add_argument("--config", required=True, help="loop YAML (pool, eval, learner, strategies, seeds ...)")
    a.add_argument("--rounds", type=int)
    a.add_argument("--budget", type=int)
    a.add_argument("--output-dir")


PARSERS = {"al": add_al}
