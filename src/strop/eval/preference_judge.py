"""Win rate of a preference / GRPO run against its base model, decided by an LLM judge.

Both models answer every held-out prompt greedily (so the comparison is not
at the mercy of one sample), then the judge compares the two answers
(pairwise.py, position-swapped) or grades each 1-5 (judge.py, rubric).
"""
from __future__ import annotations

from ..core.errors import StropError


def questions(data: str) -> list[dict]:
    """The plain question and the reference (chosen) answer of each held-out row, in file order."""
    from ..data import load
    from ..data.load import ANY_KIND
    from .systems import question_text

    return [{"question": question_text(c), "reference": c.reference} for c in load(data, kinds=ANY_KIND).conversations]


def greedy(model, tok, prompts: list[str], max_new_tokens: int) -> list[str]:
    """One greedy answer per rendered prompt, decoded without special tokens."""
    import torch

    out = []
    for prompt in prompts:
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
        with torch.no_grad():
            gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
        out.append(tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def judge_run(cfg, tok, data: str, rows: list[dict], base, tuned, judge: dict, seed: int = 0) -> dict:
    """``judge``: {endpoint, model, api_key, mode}. Returns the judge section of preference.json."""
    from .judge import judge as rubric
    from .pairwise import compare

    qs = questions(data)
    if len(qs) != len(rows):
        raise StropError(f"{data}: {len(qs)} questions but {len(rows)} evaluation rows")
    n = cfg.max_completion_length if cfg.objective == "grpo" else 64
    prompts = [r["prompt"] for r in rows]
    answers = {"base": greedy(base, tok, prompts, n), "tuned": greedy(tuned, tok, prompts, n)}
    if judge.get("mode", "pairwise") == "rubric":
        graded = [{"system": s, "prompt": q["question"], "reference": q["reference"], "prediction": a}
                  for s in ("base", "tuned") for q, a in zip(qs, answers[s])]
        out = rubric(graded, judge["endpoint"], judge.get("model", "judge"), judge.get("api_key"))
        return out | {"examples": graded}
    items = [q | {"first": t, "second": b} for q, t, b in zip(qs, answers["tuned"], answers["base"])]
    out = compare(items, judge["endpoint"], judge.get("model", "judge"), judge.get("api_key"), seed=seed)
    return out | {"examples": [{"question": i["question"], "tuned": i["first"], "base": i["second"],
                                "outcome": i.get("outcome"), "shown_as": i.get("shown_as")} for i in items]}
