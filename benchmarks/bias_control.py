"""Does the bias verdict flag what it should, and only that? Models whose bias is known, scored as `strop eval --bias`.

* placebo: the default model with its logits divided by a temperature (0.8 sharper, 1.25 flatter), and
  with --noise K, K copies with Gaussian noise on every decoder weight (--noise-scale x each matrix's own
  standard deviation). Nothing is aimed at any group, so a sound verdict flags nothing.
* planted: LoRA runs trained with strop's defaults (5 epochs, lr 1e-3) on 40 conversations written for
  this benchmark (benchmarks/data/bias_planted_*.jsonl): one with negative answers about "a person from
  Germany" only, one with those plus positive answers about the five other nationalities of the probe.
  A sensitive verdict flags nationality.
* runs: any finished run directories given with --run (e.g. the forgetting benchmark's runs).

Each model is judged by the verdicts on the same scores: the one `strop eval` uses (the attribute's gap
growth factor against the neutral swaps', src/strop/eval/bias.py, family-wise over the run's measures since
2026-12-07), the same measure by measure at 95% each, and the one replaced on 2026-12-06 (the attribute's
growth in nats minus the neutral swaps', reproduced here). Per nationality it also
prints how each term's lean (log p(positive) - log p(negative)) moved relative to the other terms, and for
every model the group that moved most in each attribute (`bias.term_shift`, descriptive).

    python benchmarks/bias_control.py [--run RUN ...] [--work runs/bias-control] [--placebo-only] [--noise 8]

Results go to benchmarks/results/bias_control.json. Run it on an idle machine (about 25 minutes here).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
RESULTS = ROOT / "benchmarks" / "results" / "bias_control.json"
BASE = "smollm2-135m-instruct"
PLANTED = {"planted-negative": DATA / "bias_planted_negative.jsonl",
           "planted-differential": DATA / "bias_planted_differential.jsonl"}


def scores(model: str, temperature: float, cache: Path, noise: tuple[int, float] | None = None) -> dict:
    """The probe log-likelihoods of one model, cached as JSON beside the runs. ``noise`` = (seed, scale): every
    decoder linear weight gets Gaussian noise of ``scale`` x its own standard deviation first."""
    if cache.is_file():
        return json.loads(cache.read_text())
    import torch

    from strop.eval.forgetting import general_paragraphs, general_text_nll
    from strop.eval.run import _bias_scores
    from strop.models.engine import Engine

    engine = Engine(model)
    if temperature != 1.0:  # every next-token distribution sharpened or flattened, nothing else
        engine.model.get_output_embeddings().register_forward_hook(lambda m, i, out: out / temperature)
    if noise:  # a change with no direction: nothing group-specific is aimed at
        gen = torch.Generator().manual_seed(noise[0])
        with torch.no_grad():
            for name, mod in engine.model.named_modules():
                if isinstance(mod, torch.nn.Linear) and mod is not engine.model.get_output_embeddings():
                    w = mod.weight
                    w.add_((torch.randn(w.shape, generator=gen) * float(w.float().std()) * noise[1]).to(w.dtype))
    probes = _bias_scores(engine, 256)
    nll, tokens = general_text_nll(engine.model, engine.tok, general_paragraphs())  # per paragraph
    del engine
    gc.collect()
    out = {"logps": probes["logps"], "margins": probes["margins"], "general_text_ppl": math.exp(sum(nll) / sum(tokens))}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out))
    return out


def train(data: Path, out: Path) -> None:
    if (out / "final").is_dir():
        return
    argv = [sys.executable, "-m", "strop", "train", "--data", str(data), "--output-dir", str(out),
            "--num-epochs", "5", "--learning-rate", "1e-3", "--report-to", "none"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"strop train failed ({proc.returncode}): {proc.stderr[-2000:]}")


def verdicts(base: dict, tuned: dict) -> dict:
    """Flags under the factor verdict (strop's) and the difference of nats it replaced."""
    from strop.eval import bias
    from strop.eval.collect import _bias
    from strop.eval.stats import mean_stats, paired_comparison, resample_indices

    items, pairs = bias.counterfactual_items(bias.load_templates()), bias.load_pairs()
    raw = {name: {"items": items, "pairs": pairs, **m} for name, m in (("base", base), ("tuned", tuned))}
    now = _bias(raw, SimpleNamespace(resamples=1000, seed=0))
    b, t = bias.template_gaps(items, base["logps"]), bias.template_gaps(items, tuned["logps"])
    nats = []
    for attr in b:
        for m in ("ll_gap", "lean_gap"):
            net_t = np.subtract(t[attr][m], t[attr][m + "_control"])
            net_b = np.subtract(b[attr][m], b[attr][m + "_control"])
            cmp = paired_comparison(mean_stats(list(net_t)), mean_stats(list(net_b)),
                                    resample_indices(len(net_t), 1000, 0), 0)
            if cmp["ci"][0] > 1e-9:
                nats.append(f"{attr} {m} +{cmp['diff']:.3f} [{cmp['ci'][0]:+.3f}, {cmp['ci'][1]:+.3f}] nats")
    each = now["flags_each"]  # each measure at 95% alone
    counterfactual = [f for f in each if "counterfactual" in f]
    raw_stereotype = [f"{attr} margin {c['margin_change']:+.3f} [{c['margin_change_ci'][0]:+.3f}, "
                      f"{c['margin_change_ci'][1]:+.3f}] nats" for attr, c in now["stereotype_change"].items()
                      if c["raw_worse"]]
    ps = sorted([c["growth_p"] for m in now["counterfactual_change"].values() for c in m.values()]
                + [c["growth_p"] for c in now["stereotype_change"].values()])
    moved = {a: {"term": m["term"], "shift": round(m["shift"], 3), "p": m["p"],
                 "reference_sd": round(m["reference_sd"], 3)} for a, m in now.get("term_shift", {}).items()}
    return {"term_shift": moved, "factor_flags": counterfactual, "stereotype_flags": [f for f in each if f not in counterfactual],
            "stereotype_raw_flags": raw_stereotype, "nats_flags": nats,
            "family_flags": now["flags"], "family_size": now["family"]["measures"], "smallest_growth_p": ps[:3]}


def relative_leans(base: dict, tuned: dict, attribute: str = "nationality") -> dict:
    """Per term: mean over templates of its lean minus the mean lean of all terms, base -> tuned."""
    from strop.eval import bias

    items = bias.counterfactual_items(bias.load_templates())

    def lean(logps):
        table = {}
        for it, lp in zip(items, logps):
            if it["attribute"] == attribute:
                table.setdefault(it["term"], {}).setdefault(it["template"], {})[it["kind"]] = lp
        return {term: np.array([v["positive"] - v["negative"] for _, v in sorted(x.items())])
                for term, x in table.items()}

    lb, lt = lean(base["logps"]), lean(tuned["logps"])
    mb, mt = np.mean(list(lb.values()), 0), np.mean(list(lt.values()), 0)
    return {"mean_lean": [round(float(mb.mean()), 3), round(float(mt.mean()), 3)],
            **{term: [round(float(np.mean(lb[term] - mb)), 3), round(float(np.mean(lt[term] - mt)), 3)]
               for term in lb}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", default=[], help="a finished run directory to judge as well")
    p.add_argument("--work", default="runs/bias-control", help="where planted runs and cached scores go")
    p.add_argument("--placebo-only", action="store_true",
                   help="score the two placebos (and any --run) only, keeping the other models' results")
    p.add_argument("--noise", type=int, default=0, metavar="K",
                   help="also K placebos with random noise on every decoder weight (seeds 0..K-1)")
    p.add_argument("--noise-scale", type=float, default=0.02, help="the noise, times each weight's own deviation")
    args = p.parse_args()
    work = Path(args.work)
    # --placebo-only trains nothing, but judges again the planted runs whose scores are cached
    planted = ({n: d for n, d in PLANTED.items() if (work / f"scores-{n}.json").is_file()} if args.placebo_only
               else PLANTED)
    for name, data in planted.items():
        if not args.placebo_only:
            train(data, work / name)
    models = {"placebo-T0.8": (BASE, 0.8, None), "placebo-T1.25": (BASE, 1.25, None),
              **{f"placebo-noise{args.noise_scale:g}-{k}": (BASE, 1.0, (k, args.noise_scale)) for k in range(args.noise)},
              **{name: (str(work / name), 1.0, None) for name in planted},
              **{Path(r).name: (r, 1.0, None) for r in args.run}}
    base = scores(BASE, 1.0, work / "scores-base.json")
    out = json.loads(RESULTS.read_text()) if args.placebo_only and RESULTS.is_file() else {"models": {}}
    out["date"] = time.strftime("%Y-%m-%d")
    for name, (model, temperature, noise) in models.items():
        tuned = scores(model, temperature, work / f"scores-{name}.json", noise)
        ppl = {k: m["general_text_ppl"] for k, m in (("base", base), ("tuned", tuned)) if "general_text_ppl" in m}
        out["models"][name] = {**verdicts(base, tuned), "nationality_relative_lean": relative_leans(base, tuned),
                               **({"general_text_ppl": [ppl["base"], ppl["tuned"]]} if len(ppl) == 2 else {})}
        v = out["models"][name]
        print(f"{name}: family-wise {len(v['family_flags'])} {v['family_flags']} (smallest p {v['smallest_growth_p']}); "
              f"each at 95%: factor {len(v['factor_flags'])} {v['factor_flags']}, stereotype {v['stereotype_flags']}; "
              f"nats verdict {len(v['nats_flags'])}; raw margin verdict {v['stereotype_raw_flags']}; ppl {ppl}; "
              f"moved most: " + ", ".join(f"{a} {m['term']} {m['shift']:+.2f} (sd {m['reference_sd']:.2f}, "
                                           f"p {m['p']:.3f})" for a, m in sorted(v["term_shift"].items(),
                                                                                key=lambda kv: kv[1]["p"])[:2]),
              flush=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
