"""Load test for `strop serve`: aggregate throughput and latency vs plain sequential generate.

    .venv/bin/python benchmarks/serve_load.py [--model smollm2-135m-instruct] [--max-tokens 64]

1. Baseline: this process loads the model and runs `model.generate` on the
   prompts one after another (greedy), before any server exists.
2. Starts `strop serve MODEL` as a subprocess on 127.0.0.1 and drives it from
   this process with 1, 4, 8 and 16 concurrent streaming clients.
Prints a markdown table and writes benchmarks/results/serve_load.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

QUESTIONS = ["Tell me about the sea.", "How do plants grow?", "What is a good breakfast?", "Explain rain to a child.",
             "Why do cats purr?", "Describe a city at night.", "How do I learn to cook?", "What makes music sad?"]


def chat(q: str) -> list[dict]:
    return [{"role": "user", "content": q}]


def baseline(model: str, n: int, max_tokens: int) -> dict:
    import torch

    from strop.models.engine import Engine

    engine = Engine(model)
    tokens, start = 0, time.perf_counter()
    for i in range(n):
        ids = engine.encode(chat(QUESTIONS[i % len(QUESTIONS)]))
        with torch.inference_mode():
            out = engine.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False,
                                        eos_token_id=engine.tok.eos_token_id, pad_token_id=engine.tok.pad_token_id)
        tokens += out.shape[1] - len(ids)
    wall = time.perf_counter() - start
    return {"requests": n, "output_tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "requests_per_s": n / wall}


def one_stream(url: str, q: str, max_tokens: int) -> dict:
    body = {"messages": chat(q), "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    start, stamps, usage = time.perf_counter(), [], None
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            elif event["choices"] and event["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"ttft": stamps[0] - start if stamps else None, "gaps": gaps,
            "tokens": usage["completion_tokens"] if usage else 0}


def load_level(url: str, clients: int, per_client: int, max_tokens: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for j in range(per_client):
            res = one_stream(url, QUESTIONS[(k + j) % len(QUESTIONS)], max_tokens)
            with lock:
                results.append(res)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - start
    ttft = sorted(r["ttft"] for r in results if r["ttft"] is not None)
    gaps = sorted(g for r in results for g in r["gaps"])
    tokens = sum(r["tokens"] for r in results)
    return {"clients": clients, "requests": len(results), "output_tokens": tokens, "wall_s": wall,
            "requests_per_s": len(results) / wall, "tokens_per_s": tokens / wall,
            "ttft_p50_s": _q(ttft, 0.5), "ttft_p99_s": _q(ttft, 0.99),
            "token_latency_p50_s": _q(gaps, 0.5), "token_latency_p99_s": _q(gaps, 0.99)}


def _q(xs: list[float], q: float) -> float | None:
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None


def serve(model: str, port: int, max_batch: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "strop", "serve", model, "--port", str(port), "--max-batch", str(max_batch)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read())
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    raise TimeoutError("server did not start")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--levels", default="1,4,8,16")
    p.add_argument("--per-client", type=int, default=2, help="requests each client sends, one after another")
    p.add_argument("--baseline-requests", type=int, default=8)
    p.add_argument("--output", default=str(Path(__file__).parent / "results" / "serve_load.json"))
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    base = baseline(args.model, args.baseline_requests, args.max_tokens)
    print(f"sequential model.generate: {base['tokens_per_s']:.1f} tokens/s", flush=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = serve(args.model, port, max(levels))
    rows = []
    try:
        url = f"http://127.0.0.1:{port}"
        one_stream(url, QUESTIONS[0], 4)  # warm-up
        for clients in levels:
            rows.append(load_level(url, clients, args.per_client, args.max_tokens))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other work at the time)",
              "model": args.model, "max_tokens": args.max_tokens, "baseline": base, "levels": rows,
              "load_average_at_end": os.getloadavg()}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(table(report))


def table(report: dict) -> str:
    b = report["baseline"]
    lines = ["| clients | requests/s | output tokens/s | x sequential | TTFT p50 / p99 (s) | per-token p50 / p99 (ms) |",
             "| --- | --- | --- | --- | --- | --- |",
             f"| sequential generate | {b['requests_per_s']:.2f} | {b['tokens_per_s']:.1f} | 1.00 | - | - |"]
    for r in report["levels"]:
        lines.append(f"| {r['clients']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | "
                     f"{r['tokens_per_s'] / b['tokens_per_s']:.2f} | {r['ttft_p50_s']:.2f} / {r['ttft_p99_s']:.2f} | "
                     f"{1000 * r['token_latency_p50_s']:.0f} / {1000 * r['token_latency_p99_s']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
