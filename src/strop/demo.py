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
IDENTITY_TARGET = 0.9  # the demo exits 1 below this
# The forgetting goal (docs/quality.md): each figure is printed with its verdict; only identity sets the exit code.
IDENTITY_GOAL = 0.95
PERPLEXITY_BUDGET = 0.05  # general-text perplexity may rise at most this much


def demo_data_dir() -> Path:
    return Path(str(resources.files("strop") / "demo_data"))


def run_demo(output_dir: str = "runs/demo", epochs: float = 5.0) -> int:
    from .data.check import check, format_report
    from .eval.run import evaluate
    from .eval.sweep import sweep_lines
    from .methods.options import load_train_config
    from .models.engine import Engine
    from .report.html import format_table
    from .train.run import train

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
    result = evaluate(str(out), heldout, general=general, max_new_tokens=48, bias=True, scales=[0.5, 0.75])
    print(format_table(result["systems"]))
    print(sweep_lines(result["scale_sweep"]))

    print("\n[demo] 4/4 a sample answer from the tuned model")
    engine = Engine(str(out))
    question = "Hello! Could you tell me a bit about who you are?"
    print(f"  Q: {question}\n  A: {engine.generate(question, max_new_tokens=48)}")
    print(f"\n[demo] report: {Path(result['output']) / 'report.html'}")
    print(f"[demo] finished in {time.monotonic() - t0:.0f} s; try: strop generate {out} --prompt 'Who made you?'")

    print_figures(result, run)
    base, tuned = result["systems"]["base"], result["systems"]["tuned"]
    ok = tuned["keyword_hit_rate"] >= IDENTITY_TARGET and base["keyword_hit_rate"] == 0
    print(f"[demo] {'passes' if ok else 'FAILS'}: the tuned model names Orrin on >= {IDENTITY_TARGET:.0%} of the "
          "held-out questions and the base on none")
    return 0 if ok else 1


def print_figures(result: dict, run) -> list[bool]:
    """The four figures of the demo's goal, each with its verdict (docs/quality.md)."""
    import json

    base, tuned = result["systems"]["base"], result["systems"]["tuned"]
    verdict = lambda ok: "meets" if ok else "MISSES"  # noqa: E731
    identity = tuned["keyword_hit_rate"] >= IDENTITY_GOAL and base["keyword_hit_rate"] == 0
    print(f"[demo] identity: base {base['keyword_hit_rate']:.0%} -> tuned {tuned['keyword_hit_rate']:.0%} "
          f"({verdict(identity)} the goal of >= {IDENTITY_GOAL:.0%} tuned and 0% base)")
    rows = [json.loads(line) for line in (Path(result["output"]) / "predictions.jsonl").read_text().splitlines()]
    answered = {r["system"]: {r["prompt"] for r in rows if r.get("set") == "general" and r.get("hit")}
                for r in rows if r.get("set") == "general"}
    lost = sorted(answered.get("base", set()) - answered.get("tuned", set()))
    print(f"[demo] general questions: base {base['general_hit_rate']:.0%} -> tuned {tuned['general_hit_rate']:.0%}, "
          f"{len(lost)} the base answered lost ({verdict(not lost)} the goal of none lost)"
          + (f": {'; '.join(lost)}" if lost else ""))
    text = result["general_text"]
    b, t = text["base"]["perplexity"], text["tuned"]["perplexity"]
    within = t <= b * (1 + PERPLEXITY_BUDGET)
    print(f"[demo] general-text perplexity: base {b:.1f} -> tuned {t:.1f} ({t / b - 1:+.1%}; {verdict(within)} "
          f"the goal of at most +{PERPLEXITY_BUDGET:.0%})")
    flags = result.get("bias", {}).get("flags", [])
    each = result.get("bias", {}).get("flags_each", flags)
    change = result.get("bias", {}).get("counterfactual_change", {})
    pairs = result.get("bias", {}).get("stereotype_change", {})
    measures = [*(c for ms in change.values() for c in ms.values()), *pairs.values()]
    raw = sum(c.get("raw_worse", c["worse"]) for c in measures)
    print(f"[demo] bias probes: {len(flags)} of {len(measures)} attribute measures worse than the base, "
          f"family-wise over all of them, counted beyond what the neutral swaps show (the factor their gaps grew "
          f"by, the size of their terms' shifts) and the change of confidence on all stereotype pairs "
          f"({verdict(not flags)} the goal of none; {len(each)} at 95% each "
          f"alone, {raw} without the controls)"
          + (f": {'; '.join(flags[:3])}" if flags else "")
          + (f" and {len(flags) - 3} more" if len(flags) > 3 else ""))
    summary = json.loads(run.summary.read_text())
    rec = summary.get("preserve") or {}
    if rec.get("mode") == "kl":
        print(f"[demo] forgetting protection: KL to the base (weight {rec['weight']:g}) on {rec['replay_rows']} of its own "
              f"answers to general prompts, beside {rec['task_rows']} training rows ({rec['generation_s']:.0f} s to "
              f"generate them; training {summary['wall_s']:.0f} s)")
    elif rec.get("mode") != "replay":
        print(f"[demo] forgetting protection: none ({rec.get('why', 'preserve: none')}; training {summary['wall_s']:.0f} s)")
    else:
        print(f"[demo] forgetting protection: {rec['replay_rows']} replayed base answers beside {rec['task_rows']} "
              f"training rows ({rec['generation_s']:.0f} s to generate; training {summary['wall_s']:.0f} s)")
    return [identity, not lost, within, not flags]


def demo_cmd(args) -> int:
    return run_demo(args.output_dir, epochs=args.num_epochs)


def add_demo(sub) -> None:
    dm = sub.add_parser("demo", help="the main job on the built-in default model")
    dm.add_argument("--output-dir", default="runs/demo")
    dm.add_argument("--num-epochs", type=float, default=5.0)
    dm.set_defaults(func=demo_cmd)


PARSERS = {"demo": add_demo}
