"""The Tinker-compatible API's speed on this machine: training steps/s and sampling tokens/s.

Starts `strop tinker-serve` in this process and drives it with the official `tinker` SDK: a LoRA
client on the default model, supervised steps (forward_backward with cross_entropy, then
optim_step) on the demo persona conversations, then sampling from a snapshot of the trained weights.

    python benchmarks/tinker_api.py                 # 10 steps of 8 conversations, 4 x 32 sampled tokens
    python benchmarks/tinker_api.py --steps 20 --batch 4

Results are appended to benchmarks/results/tinker.json. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()

    import uvicorn
    from conftest import free_port

    from strop import models
    from strop.tinker.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(tempfile.mkdtemp(prefix="tinker-bench-")), host="127.0.0.1",
                                           port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    os.environ.update(TINKER_BASE_URL=f"http://127.0.0.1:{port}", TINKER_API_KEY="tml-local", TINKER_TELEMETRY="0")

    import tinker
    from tinker import types

    tok = models.load_tokenizer(args.model)
    rows = [json.loads(line) for line in (ROOT / "src/strop/demo_data/persona_train.jsonl").read_text().splitlines()]
    data = []
    for row in rows[:args.batch]:
        messages = row["messages"]
        prompt = tok.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        p = tok.encode(prompt, add_special_tokens=False)
        a = tok.encode(messages[-1]["content"], add_special_tokens=False) + [tok.eos_token_id]
        ids = p + a
        data.append(types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]),
                                loss_fn_inputs={"target_tokens": ids[1:],
                                                "weights": [0.0] * (len(p) - 1) + [1.0] * len(a)}))
    tokens_per_step = sum(len(d.model_input.to_ints()) for d in data)

    service = tinker.ServiceClient()
    t0 = time.monotonic()
    tc = service.create_lora_training_client(base_model=args.model, rank=args.rank)
    load_s = time.monotonic() - t0
    losses = []
    t0 = time.monotonic()
    for _ in range(args.steps):
        fb = tc.forward_backward(data, "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=1e-4)).result()
        weight = sum(sum(d.loss_fn_inputs["weights"].tolist()) for d in data)
        losses.append(fb.result().metrics["loss:sum"] / weight)
    train_s = time.monotonic() - t0
    sampler = tc.save_weights_and_get_sampling_client().result()
    prompt = types.ModelInput.from_ints(tok.encode(
        tok.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True,
                                tokenize=False), add_special_tokens=False))
    t0 = time.monotonic()
    out = sampler.sample(prompt, args.samples, types.SamplingParams(max_tokens=args.max_tokens, temperature=1.0,
                                                                    seed=0)).result()
    sample_s = time.monotonic() - t0
    sampled = sum(len(s.tokens) for s in out.sequences)
    service.close("success")
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "model": args.model, "lora_rank": args.rank, "batch": args.batch, "steps": args.steps,
        "tokens_per_step": tokens_per_step, "model_load_s": round(load_s, 1),
        "steps_per_s": round(args.steps / train_s, 3), "train_tokens_per_s": round(args.steps * tokens_per_step / train_s, 1),
        "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
        "sampled_tokens": sampled, "sample_tokens_per_s": round(sampled / sample_s, 1),
    }
    print(json.dumps(result, indent=2))
    out_file = ROOT / "benchmarks/results/tinker.json"
    history = json.loads(out_file.read_text()) if out_file.is_file() else []
    out_file.write_text(json.dumps(history + [result], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
