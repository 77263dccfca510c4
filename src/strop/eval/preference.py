"""Evaluation for preference and RL runs: base vs tuned on held-out data.

- preference accuracy: share of held-out pairs where the model gives the
  chosen answer a higher summed log-likelihood than the rejected one;
- KL from the reference: mean per-token KL(tuned || base) over the chosen
  answers, teacher-forced (a fixed set of contexts, so runs compare);
- mean reward of sampled completions on held-out prompts (GRPO), for every
  reward function of the run, and reward-model score distribution when the
  run names a reward model.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from ..core.config import TrainConfig, build, load_yaml
from ..core.errors import StropError
from ..models.precision import load_dtype


def run_config(run: Path) -> TrainConfig:
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise StropError(f"{run}: not a strop run directory (no config.yaml)")
    return build(TrainConfig, load_yaml(path), origin=str(path))


def _ids(tok, prompt: str, completion: str) -> tuple[list[int], int]:
    """Token ids of prompt+completion and where the completion starts."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    full = tok(prompt + completion, add_special_tokens=False)["input_ids"]
    k = 0
    while k < min(len(p), len(full)) and p[k] == full[k]:
        k += 1
    return full, k


def _completion_logprobs(model, ids: list[int], start: int):
    """(T-start, V) log-probabilities at the completion positions and the (T-start,) targets."""
    import torch

    x = torch.tensor([ids], device=model.device)
    with torch.no_grad():
        logits = model(x).logits[0, :-1].float()  # (T-1, V)
    logp = torch.log_softmax(logits, dim=-1)[max(start - 1, 0):]
    return logp, x[0, max(start, 1):]


def sequence_logp(model, tok, prompt: str, completion: str) -> float:
    ids, start = _ids(tok, prompt, completion)
    logp, targets = _completion_logprobs(model, ids, start)
    return float(logp.gather(1, targets[:, None]).sum())


def preference_accuracy(model, tok, rows: list[dict]) -> dict:
    """rows: {prompt, chosen, rejected} texts, as built for training."""
    margins = [sequence_logp(model, tok, r["prompt"], r["chosen"]) - sequence_logp(model, tok, r["prompt"], r["rejected"])
               for r in rows]
    return {"pairs": len(rows), "accuracy": sum(m > 0 for m in margins) / len(rows),
            "mean_margin": statistics.fmean(margins), "margins": [round(m, 4) for m in margins]}


def kl_from_reference(model, ref, tok, rows: list[dict], answer: str = "chosen") -> float:
    """Mean per-token KL(model || ref) over the rows' answers."""
    import torch

    total, count = 0.0, 0
    for r in rows:
        ids, start = _ids(tok, r["prompt"], r[answer])
        lp, _ = _completion_logprobs(model, ids, start)
        lq, _ = _completion_logprobs(ref, ids, start)
        total += float((torch.exp(lp) * (lp - lq)).sum())
        count += lp.shape[0]
    return total / max(count, 1)


def sample(model, tok, prompts: list[str], n: int, max_new_tokens: int, temperature: float, seed: int) -> list[list[str]]:
    """n sampled completions per prompt (decoded without special tokens, as GRPO's reward functions see them)."""
    import torch

    torch.manual_seed(seed)
    out = []
    for prompt in prompts:
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
        with torch.no_grad():
            gen = model.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                                 max_new_tokens=max_new_tokens, num_return_sequences=n, pad_token_id=tok.pad_token_id)
        out.append(tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def mean_rewards(funcs: dict, rows: list[dict], completions: list[list[str]]) -> dict:
    """Mean of each reward function over every sampled completion."""
    flat_rows = [r for r, cs in zip(rows, completions) for _ in cs]
    flat = [c for cs in completions for c in cs]
    extra = {k: [r.get(k) for r in flat_rows] for k in flat_rows[0] if k != "prompt"}
    result = {}
    for name, func in funcs.items():
        scores = func(prompts=[r["prompt"] for r in flat_rows], completions=flat, **extra)
        result[name] = {"mean": statistics.fmean(scores), "std": statistics.pstdev(scores)}
    return result


def reward_model_scores(rm, tok, rows: list[dict], completions: list[list[str]]) -> dict:
    """Score distribution of the completions under a trained reward model."""
    import torch

    scores = []
    for r, cs in zip(rows, completions):
        for c in cs:
            enc = tok(r["prompt"] + c, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                scores.append(float(rm(**enc).logits[0, 0]))
    q = statistics.quantiles(scores, n=4) if len(scores) > 1 else [scores[0]] * 3
    return {"n": len(scores), "mean": statistics.fmean(scores), "std": statistics.pstdev(scores),
            "q25": q[0], "median": q[1], "q75": q[2], "min": min(scores), "max": max(scores)}


def reward_pair_accuracy(rm, tok, rows: list[dict]) -> dict:
    """Held-out pairwise accuracy of a reward model: score(chosen) > score(rejected)."""
    import torch

    def score(text: str) -> float:
        with torch.no_grad():
            return float(rm(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0])

    margins = [score(r["prompt"] + r["chosen"]) - score(r["prompt"] + r["rejected"]) for r in rows]
    return {"pairs": len(rows), "accuracy": sum(m > 0 for m in margins) / len(rows), "mean_margin": statistics.fmean(margins)}


def _rows(cfg: TrainConfig, tok, data: str, objective: str) -> list[dict]:
    from ..data import load
    from ..data.load import ANY_KIND
    from ..train.preference_data import ROW_BUILDERS, prompt_row

    ds = load(data, kinds=ANY_KIND)
    if objective == "grpo":
        return [prompt_row(tok, c, cfg) for c in ds.conversations]
    if ds.kind != "preference":
        raise StropError(f"{data}: preference evaluation needs paired rows (prompt, chosen, rejected), "
                         f"this file holds {ds.kind} data")
    return [ROW_BUILDERS["preference"](tok, c, cfg) for c in ds.conversations]


def evaluate_run(run: str | Path, data: str = "", *, output: str | Path | None = None, samples: int = 4,
                 seed: int = 0, judge: dict | None = None, allow_pickle: bool = False) -> dict:
    """Base vs tuned on held-out data for a preference / reward / GRPO run; writes eval/preference.json.

    ``judge`` ({endpoint, model, api_key, mode}) adds the judged win rate of tuned vs base
    (preference_judge.py).
    """
    from .. import models
    from ..core.paths import check_output

    run = Path(run)
    out = check_output(output if output else run / "eval", kind="dir", label="--output" if output else "eval output")
    cfg = run_config(run)
    data = data or cfg.eval_data
    if not data:
        raise StropError(f"{run}: give held-out data with --data (the run has no eval_data)")
    if judge and cfg.objective == "reward":
        raise StropError("--judge: a reward-model run generates no answers to judge; drop --judge")
    t0 = time.monotonic()
    tok = models.load_tokenizer(str(run))
    result: dict = {"run": str(run), "objective": cfg.objective, "data": data}
    if cfg.objective == "reward":
        from ..train.preference import load_reward_model

        result["reward_model"] = reward_pair_accuracy(load_reward_model(str(run)), tok, _rows(cfg, tok, data, "reward"))
    else:
        rows = _rows(cfg, tok, data, "grpo" if cfg.objective == "grpo" else "dpo")
        dtype = load_dtype(cfg)
        policy = models.LoadPolicy(allow_pickle=allow_pickle)  # .bin/.pt only with --allow-pickle, weights_only
        base = models.load_model(cfg.base_model, dtype, policy=policy)
        tuned = models.load_model(str(run), dtype, policy=policy)
        base.eval()
        tuned.eval()
        if cfg.objective == "grpo":
            result.update(_grpo_eval(cfg, tok, rows, base, tuned, samples, seed))
        else:
            result["base"] = preference_accuracy(base, tok, rows)
            result["tuned"] = preference_accuracy(tuned, tok, rows)
            result["kl_from_reference"] = kl_from_reference(tuned, base, tok, rows)
        if judge:
            from .preference_judge import judge_run

            result["judge"] = judge_run(cfg, tok, data, rows, base, tuned, judge, seed)
    result["eval_wall_s"] = round(time.monotonic() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "preference.json").write_text(json.dumps(result, indent=2))
    from ..core.rundir import RunDir
    from .preference_report import write_preference_report

    write_preference_report(out, result, RunDir(run).read_metrics())
    result["output"] = str(out)
    return result


def _grpo_eval(cfg: TrainConfig, tok, rows, base, tuned, samples: int, seed: int) -> dict:
    from ..train import rewards

    funcs = {spec: rewards.load(spec) for spec in cfg.reward_funcs}
    prompts = [r["prompt"] for r in rows]
    out: dict = {"prompts": len(rows), "samples_per_prompt": samples}
    rm = None
    if cfg.reward_model:
        from .. import models
        from ..train.preference import load_reward_model

        rm, rm_tok = load_reward_model(cfg.reward_model), models.load_tokenizer(cfg.reward_model)
    for name, model in (("base", base), ("tuned", tuned)):
        comps = sample(model, tok, prompts, samples, cfg.max_completion_length, cfg.temperature, seed)
        out[name] = {"rewards": mean_rewards(funcs, rows, comps) if funcs else {},
                     "example": comps[0][0]}
        if rm is not None:
            out[name]["reward_model"] = reward_model_scores(rm, rm_tok, rows, comps)
    # KL on the rows' own answers: fixed contexts, so it compares across runs.
    out["kl_from_reference"] = kl_from_reference(tuned, base, tok, rows, answer="reference")
    return out


def is_preference_run(model: str) -> bool:
    """A run directory whose config names an objective other than SFT."""
    path = Path(model) / "config.yaml"
    if not path.is_file():
        return False
    return load_yaml(path).get("objective", "sft") != "sft"


def describe(result: dict) -> str:
    """A few readable lines for the CLI."""
    lines = [f"{result['objective']} run {result['run']} on {result['data']}:"]
    if "reward_model" in result:
        rm = result["reward_model"]
        lines.append(f"  reward model pairwise accuracy {rm['accuracy']:.3f} on {rm['pairs']} pairs "
                     f"(mean margin {rm['mean_margin']:.3f})")
    for name in ("base", "tuned"):
        part = result.get(name)
        if part and "accuracy" in part:
            lines.append(f"  {name:<5} preference accuracy {part['accuracy']:.3f} on {part['pairs']} pairs "
                         f"(mean log-likelihood margin {part['mean_margin']:.2f})")
        elif part:
            rewards = ", ".join(f"{k.split(':')[-1]} {v['mean']:.3f}" for k, v in part["rewards"].items())
            rm = f", reward model mean {part['reward_model']['mean']:.3f}" if "reward_model" in part else ""
            lines.append(f"  {name:<5} mean reward: {rewards}{rm}")
    if result.get("kl_from_reference") is not None:
        lines.append(f"  KL(tuned || base) per token: {result['kl_from_reference']:.4f}")
    j = result.get("judge")
    if j and j.get("mode") == "pairwise":
        from .pairwise import sentence

        lines.append(f"  {sentence(j)}")
    elif j:
        lines.append(f"  rubric judge SKIPPED: {j['skipped']}" if "skipped" in j else
                     "  rubric judge mean grade: " + ", ".join(f"{s} {m:.2f}" for s, m in j["mean"].items()))
    lines.append(f"  written to {result['output']}/preference.json and report.html ({result['eval_wall_s']} s)")
    return "\n".join(lines)
