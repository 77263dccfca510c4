"""Time `strop data check` on generated rows (default 100,000), without embedding checks.

    .venv/bin/python benchmarks/data_check.py [--rows 100000] [--embed-rows 2000]

Writes benchmarks/results/data_check.json. Rows are generated from a seeded
vocabulary with 2% exact duplicates, 2% near duplicates and 1% PII, so every
check has work to do. ``--embed-rows`` also times the embedding checks on a
slice (they report their own throughput).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

WORDS = ("time year people way day man thing woman life child world school state family student group country "
         "problem hand part place case week company system program question work government number night point "
         "home water room mother area money story fact month lot right study book eye job word business issue side "
         "kind head house service friend father power hour game line end member law car city community name").split()


def generate(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        r = rng.random()
        if rows and r < 0.02:
            rows.append(rows[rng.randrange(len(rows))])
            continue
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20))) + "?"
        a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 60))) + "."
        if r < 0.04 and rows:
            prev = rows[rng.randrange(len(rows))]["messages"]
            q, a = prev[0]["content"], prev[1]["content"].rstrip(".") + " indeed."
        elif r < 0.05:
            a += f" Contact me at user{i}@example.com."
        rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--embed-rows", type=int, default=0)
    args = ap.parse_args()
    from strop import models
    from strop.data.check import check

    tok = models.load_tokenizer("smollm2-135m-instruct")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in generate(args.rows)) + "\n")
        t0, c0 = time.perf_counter(), time.process_time()
        report = check(str(path), tokenizer=tok)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        # Wall time depends on what else runs; CPU seconds and the load average say how much did.
        result = {"rows": args.rows, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
                  "load_average_1min": os.getloadavg()[0], "rows_per_s": round(args.rows / seconds),
                  "stages": report["timings"], "duplicates": report["duplicates"], "pii": report["pii"],
                  "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, no GPU"}
        if args.embed_rows:
            small = Path(tmp) / "small.jsonl"
            small.write_text("\n".join(path.read_text().splitlines()[: args.embed_rows]) + "\n")
            emb = check(str(small), tokenizer=tok, embeddings=True, domain="everyday life")["embeddings"]
            result["embeddings"] = {k: emb[k] for k in ("rows", "seconds", "rows_per_s")}
    out = Path(__file__).parent / "results" / "data_check.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
