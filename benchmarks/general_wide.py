"""General questions the base answers with room to spare: "none lost" measured above the noise floor.

benchmarks/forgetting.py judges "none lost" on few questions the base gets right (8 of the demo's 10, 8 of
the personas' 20), several of them only just: eight copies of the base with undirected weight noise lose
one of the personas' eight in half the draws (benchmarks/general_noise.py). This benchmark asks 120 short
questions of its own (benchmarks/data/general_wide.jsonl: capitals, science, animals, numbers, language,
culture, everyday things; a keyword a right answer holds, matched at the start of a word) and keeps as
*stable* those the base answers right and still answers right under every one of ``--draws`` noised copies
(Gaussian noise of ``--scale`` x each decoder matrix's own standard deviation, the placebo of
benchmarks/bias_control.py). A run that loses a stable question lost something a change aimed at nothing
did not.

    python benchmarks/general_wide.py --calibrate [--draws 8 --scale 0.02]   # the base and its noised copies
    python benchmarks/general_wide.py --run runs/forgetting/RUN [--run ...]   # finished runs, against that
    python benchmarks/general_wide.py --rejudge         # the keywords applied again to the answers kept

Results go to benchmarks/results/general_wide.json (calibration once, then one row per run scored). About
two minutes per model on a 2-core CPU; run it on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forgetting import DATA, ROOT, question, rows  # noqa: E402
from general_noise import add_noise  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "general_wide.json"
QUESTIONS = DATA / "general_wide.jsonl"
BASE = "smollm2-135m-instruct"


def word_hit(answer: str, keyword: str) -> bool:
    """Any of the ``|``-separated keywords at the start of a word, case-insensitively ("ear" in "your ears",
    not "ear" in "hear"; "7" not inside "17")."""
    return any(re.search(r"(?<![\w])" + re.escape(k.lower()), answer.lower()) for k in keyword.split("|"))


def answer_all(engine) -> dict:
    """question -> {"answer": greedy answer, "ok": whether it holds the keyword}."""
    import torch

    qs = rows(QUESTIONS)
    with torch.inference_mode():  # greedy, 16 at a time (left-padded): every model here is asked the same way
        said = engine.generate_batch([[{"role": "user", "content": question(r)}] for r in qs], max_new_tokens=48,
                                     batch_size=16)
    return {question(r): {"answer": a, "ok": word_hit(a, r["keyword"])} for r, a in zip(qs, said)}


def calibrate(draws: int, scale: float) -> dict:
    import torch

    from strop.models.engine import Engine

    engine = Engine(BASE)
    original = {n: w.detach().clone() for n, w in engine.model.named_parameters()}
    base = answer_all(engine)
    right = [q for q, a in base.items() if a["ok"]]
    print(f"base: right on {len(right)}/{len(base)}", flush=True)
    noised = []
    for seed in range(draws):
        add_noise(engine.model, original, seed, scale)
        answers = answer_all(engine)
        lost = [q for q in right if not answers[q]["ok"]]
        noised.append({"seed": seed, "lost": lost, "gained": [q for q, a in base.items() if not a["ok"] and
                                                               answers[q]["ok"]],
                       "answers_lost": {q: answers[q]["answer"] for q in lost}})
        print(f"noise seed {seed}: lost {len(lost)} of the base's {len(right)}: {lost}", flush=True)
    stable = [q for q in right if not any(q in d["lost"] for d in noised)]
    print(f"stable: {len(stable)} questions (right for the base and every noised copy)", flush=True)
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}",
            "model": BASE, "draws": draws, "scale": scale, "base": base, "noised": noised, "stable": stable}


def score_run(run: Path, calibration: dict) -> dict:
    from strop.models.engine import Engine

    answers = answer_all(Engine(str(run)))
    base = calibration["base"]
    right = [q for q, a in base.items() if a["ok"]]
    lost_stable = [q for q in calibration["stable"] if not answers[q]["ok"]]
    return {"run": run.name, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "right": sum(a["ok"] for a in answers.values()), "of": len(answers),
            "lost_stable": lost_stable, "lost": [q for q in right if not answers[q]["ok"]],
            "gained": [q for q, a in base.items() if not a["ok"] and answers[q]["ok"]],
            "answers_lost": {q: answers[q]["answer"] for q in right if not answers[q]["ok"]},
            "answers": {q: a["answer"] for q, a in answers.items()}}


def rejudge(out: dict) -> None:
    """Apply the question file's keywords again to the answers the results hold (after a keyword was widened to
    take a right answer it missed, e.g. "Warszawa"). Exact for the base and for runs scored with every answer
    kept; otherwise only the answers that counted as lost are checked again, which is all a wider keyword can
    change for a question the base answered right."""
    keys = {question(r): r["keyword"] for r in rows(QUESTIONS)}
    cal = out["calibration"]
    for q, a in cal["base"].items():
        a["ok"] = word_hit(a["answer"], keys[q])
    right = [q for q, a in cal["base"].items() if a["ok"]]
    for d in cal["noised"]:
        said = d.get("answers_lost", {})
        d["lost"] = [q for q in right if q in d["lost"] and not (q in said and word_hit(said[q], keys[q]))]
    cal["stable"] = [q for q in right if not any(q in d["lost"] for d in cal["noised"])]
    for r in out.get("runs", []):
        said = r.get("answers") or r["answers_lost"]
        missed = {q for q in keys if q in said and not word_hit(said[q], keys[q])} if "answers" in r else \
            {q for q in r["lost"] if not word_hit(said[q], keys[q])}
        if "answers" in r:
            r["right"] = len(keys) - len(missed)
        else:  # only the answers that counted as lost are kept: count the ones a wider keyword now takes
            r["right"] += sum(q not in missed for q in r["lost"])
        r["lost"] = [q for q in right if q in missed]
        r["lost_stable"] = [q for q in cal["stable"] if q in missed]
        r["answers_lost"] = {q: said[q] for q in r["lost"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calibrate", action="store_true", help="answer with the base and its noised copies first")
    p.add_argument("--draws", type=int, default=8, help="noised copies for --calibrate (seeds 0..N-1)")
    p.add_argument("--scale", type=float, default=0.02, help="the noise, times each weight's own deviation")
    p.add_argument("--run", action="append", default=[], help="a finished run directory to score")
    p.add_argument("--rejudge", action="store_true",
                   help="apply the question file's keywords again to the answers already in the results")
    args = p.parse_args()
    if args.draws < 1 or args.scale <= 0:
        p.error("--draws must be at least 1 and --scale above 0")
    if not args.calibrate and not args.run and not args.rejudge:
        p.error("nothing to do: pass --calibrate, --run RUN, --rejudge, or more than one")
    for r in args.run:
        if not (Path(r) / "final").is_dir() and not (Path(r) / "adapter_config.json").is_file():
            p.error(f"--run {r}: not a finished run directory (no final/)")
    out = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if args.calibrate:
        out = {"calibration": calibrate(args.draws, args.scale), "runs": []}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    if args.run and "calibration" not in out:
        p.error(f"{RESULTS} has no calibration yet: run with --calibrate first")
    if args.run and set(out["calibration"]["base"]) != {question(r) for r in rows(QUESTIONS)}:
        p.error(f"{RESULTS}: its calibration asked other questions than {QUESTIONS.name} holds now: "
                "run with --calibrate again")
    if args.rejudge:
        if "calibration" not in out:
            p.error(f"{RESULTS} has no calibration to judge again")
        rejudge(out)
        RESULTS.write_text(json.dumps(out, indent=1) + "\n")
        print(f"judged again: {len(out['calibration']['stable'])} stable questions; "
              + "; ".join(f"{r['run']} lost {len(r['lost_stable'])}" for r in out.get("runs", [])), flush=True)
    for r in args.run:
        row = score_run(Path(r), out["calibration"])
        out["runs"] = [x for x in out.get("runs", []) if x["run"] != row["run"]] + [row]
        RESULTS.write_text(json.dumps(out, indent=1) + "\n")
        n = len(out["calibration"]["stable"])
        print(f"{row['run']}: right {row['right']}/{row['of']}; lost {len(row['lost_stable'])} of {n} stable "
              f"{row['lost_stable']}; lost {len(row['lost'])} of the base's right, gained {len(row['gained'])}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
