"""How many general questions does a change that aims at nothing cost? The floor under "none lost".

benchmarks/forgetting.py counts a general question as lost when the base model answered it
(its greedy answer holds the keyword) and the tuned model no longer does. This script asks
what that count is for undirected changes: copies of the default model with Gaussian noise
added to every decoder linear weight (``--scale`` x that matrix's own standard deviation, a
new draw per seed: the placebo of benchmarks/bias_control.py, which moves general-text
perplexity about as much as the persona runs do). Each copy answers both general-question
sets (the demo's, src/strop/demo_data/general_questions.jsonl, and the personas',
benchmarks/data/general_checks.jsonl) and is scored on the project's general text.

    python benchmarks/general_noise.py --draws 8 --scale 0.02

Results go to benchmarks/results/general_noise.json. Run it on an idle machine (about a
minute per draw on a 2-core CPU).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forgetting import DATA, DEMO, ROOT, hit, question, rows  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "general_noise.json"
SETS = {"demo": DEMO / "general_questions.jsonl", "checks": DATA / "general_checks.jsonl"}


def answer_all(engine) -> dict:
    """Per set: question -> (greedy answer, whether it holds the keyword)."""
    out = {}
    for name, path in SETS.items():
        out[name] = {}
        for r in rows(path):
            a = engine.generate(question(r), max_new_tokens=48)
            out[name][question(r)] = {"answer": a, "ok": hit(a, r["keyword"])}
    return out


def add_noise(model, original: dict, seed: int, scale: float) -> None:
    """Put ``original`` weights back, then add Gaussian noise of ``scale`` x each decoder linear weight's own
    standard deviation (the LM head untouched), drawn from ``seed``: a change aimed at nothing."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    head = model.get_output_embeddings()
    with torch.no_grad():
        for n, w in model.named_parameters():
            w.copy_(original[n])
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear) and mod is not head:
                w = mod.weight
                w.add_((torch.randn(w.shape, generator=gen) * float(w.float().std()) * scale).to(w.dtype))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--draws", type=int, default=8, help="noised copies (seeds 0..N-1)")
    p.add_argument("--scale", type=float, default=0.02, help="the noise, times each weight's own deviation")
    p.add_argument("--model", default="smollm2-135m-instruct")
    args = p.parse_args()
    if args.draws < 1 or args.scale <= 0:
        p.error("--draws must be at least 1 and --scale above 0")
    import torch

    from strop.eval.forgetting import general_paragraphs, general_text_nll
    from strop.models.engine import Engine

    engine = Engine(args.model)
    original = {n: w.detach().clone() for n, w in engine.model.named_parameters()}

    def ppl() -> float:
        nll, tokens = general_text_nll(engine.model, engine.tok, general_paragraphs())
        return math.exp(sum(nll) / sum(tokens))

    with torch.inference_mode():
        base = {"answers": answer_all(engine), "general_text_ppl": ppl()}
    draws = []
    for seed in range(args.draws):
        add_noise(engine.model, original, seed, args.scale)
        with torch.inference_mode():
            answers, text_ppl = answer_all(engine), ppl()
        lost = {s: [q for q, a in base["answers"][s].items() if a["ok"] and not answers[s][q]["ok"]] for s in SETS}
        gained = {s: [q for q, a in base["answers"][s].items() if not a["ok"] and answers[s][q]["ok"]] for s in SETS}
        draws.append({"seed": seed, "general_text_ppl": text_ppl, "lost": lost, "gained": gained, "answers": answers})
        print(f"seed {seed}: ppl {text_ppl / base['general_text_ppl'] - 1:+.1%}  "
              + "  ".join(f"{s} lost {len(lost[s])} gained {len(gained[s])}" for s in SETS)
              + "".join(f"\n    lost ({s}): {q!r} -> {answers[s][q]['answer']!r}" for s in SETS for q in lost[s]),
              flush=True)
    for s in SETS:
        right = [q for q, a in base["answers"][s].items() if a["ok"]]
        counts = [len(d["lost"][s]) for d in draws]
        print(f"{s}: base right on {len(right)}/{len(base['answers'][s])}; a draw loses {min(counts)}-{max(counts)} "
              f"(mean {sum(counts) / len(counts):.2f}); draws losing at least one: "
              f"{sum(c > 0 for c in counts)}/{len(counts)}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}",
        "model": args.model, "scale": args.scale, "base": base, "draws": draws}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
