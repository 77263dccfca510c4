"""`strop demo`: the main job end to end on the built-in default model.

Teaches SmolLM2-135M-Instruct a new identity (Orrin, built by Larkspur Labs)
with LoRA, then measures base vs tuned on differently phrased held-out
questions and on general questions, and writes an HTML report.
"""
from __future__ import annotations

import shutil
import time
from importlib import resources
from pathlib import Path

DEMO_FILES = ("persona_train.jsonl", "persona_heldout.jsonl", "general_questions.jsonl")
IDENTITY_TARGET = 0.9


def demo_data_dir() -> Path:
    return Path(str(resources.files("strop") / "demo_data"))


def run_demo(output_dir: str = "runs/demo", epochs: float = 5.0) -> int:
    from .config import load_train_config
    from .data.check import check, format_report
    from .eval.run import evaluate
    from .report.html import format_table
    from .serve.engine import Engine
    from .train.sft import train

    data = demo_data_dir()
    train_file, heldout, general = (str(data / f) for f in DEMO_FILES)
    out = Path(output_dir)
    if out.exists():
        print(f"[demo] replacing the previous demo run in {out}")
        shutil.rmtree(out)
    t0 = time.monotonic()

    print("[demo] 1/4 checking the training data")
    print(format_report(check(train_file)))

    print("\n[demo] 2/4 fine-tuning smollm2-135m-instruct with LoRA")
    cfg = load_train_config(None, {
        "data": train_file, "output_dir": str(out), "method": "lora", "num_epochs": epochs,
        "learning_rate": 1e-3, "val_size": 0.1, "report_to": "tensorboard",
        # The validation loss mixes persona and general rows; it bottoms out before the
        # new name is fully learned, so the demo keeps the last epoch and shows the curve.
        "keep_best": False, "early_stopping_patience": 0,
    })
    run = train(cfg)

    print("\n[demo] 3/4 evaluating base vs tuned on held-out identity questions and general questions")
    result = evaluate(str(out), heldout, general=general, max_new_tokens=48)
    print(format_table(result["systems"]))

    print("\n[demo] 4/4 a sample answer from the tuned model")
    engine = Engine(str(out))
    question = "Hello! Could you tell me a bit about who you are?"
    print(f"  Q: {question}\n  A: {engine.generate(question, max_new_tokens=48)}")
    print(f"\n[demo] report: {Path(result['output']) / 'report.html'}")
    print(f"[demo] finished in {time.monotonic() - t0:.0f} s; try: strop generate {out} --prompt 'Who made you?'")

    base, tuned = result["systems"]["base"], result["systems"]["tuned"]
    ok = tuned["keyword_hit_rate"] >= IDENTITY_TARGET and base["keyword_hit_rate"] == 0
    verdict = "meets" if ok else "MISSES"
    print(f"[demo] identity hit rate: base {base['keyword_hit_rate']:.0%}, tuned {tuned['keyword_hit_rate']:.0%} "
          f"({verdict} the target of >= {IDENTITY_TARGET:.0%} tuned and 0% base)")
    return 0 if ok else 1
