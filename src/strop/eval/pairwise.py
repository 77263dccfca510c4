"""Pairwise LLM-as-judge: which of two answers to the same question is better?

The judge sees answer A and answer B and replies A, B or TIE. Judges prefer
one position (often the first), so for half the examples, chosen at random
with a seed, the tuned answer is shown as A and for the other half as B; the
reply is mapped back to tuned/other before counting. How often the judge
picked each *position* is kept too, so a lopsided judge is visible.

Win rate = wins / judged; "score" counts a tie as half a win (0.5 = no
preference). Intervals are percentile bootstraps over judged examples, and
the p-value is a paired sign-flip test of wins against losses (stats.py).
Like the rubric judge, a down endpoint gives a ``skipped`` section.
"""
from __future__ import annotations

import random
import re

from .judge import JudgeDown, ask
from .stats import bootstrap_ci, mean_stats, permutation_p, resample_indices

PAIRWISE_PROMPT = """You are comparing two assistant answers to the same question.

Question:
{question}

Reference answer (for orientation; the better answer need not copy it):
{reference}

Answer A:
{a}

Answer B:
{b}

Which answer is better: more correct, more helpful, and closer to what the reference says?
Reply with exactly one of: A, B, TIE."""

_BARE = re.compile(r"^\W*(A|B|TIE)\W*$")
_LABELLED = re.compile(r"\b(?:ANSWER|VERDICT|WINNER|OUTPUT)\s*:?\s*(A|B|TIE)\b")
_TIE = re.compile(r"\bTIE\b")


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'tie' from the judge's reply; None when it is not clear.

    Accepted: the bare token ("B", "tie."), a labelled one ("Answer: A",
    "Verdict: TIE", "Answer B is better"), or the word "tie". A lone letter
    inside prose is not guessed at ("a" is also an article): it counts as unparsed.
    """
    up = (text or "").strip().upper()
    m = _BARE.match(up) or _LABELLED.search(up)
    if m:
        return "tie" if m.group(1) == "TIE" else m.group(1)
    return "tie" if _TIE.search(up) else None


def swap_plan(n: int, seed: int) -> list[bool]:
    """Per example: show the first system as B? Exactly half (rounded down) are swapped, in random order."""
    plan = [i < n // 2 for i in range(n)]
    random.Random(seed).shuffle(plan)
    return plan


def outcome(verdict: str | None, swapped: bool) -> str | None:
    """'win', 'tie' or 'loss' for the first system, given which letter it was shown as."""
    if verdict is None:
        return None
    if verdict == "tie":
        return "tie"
    first_letter = "B" if swapped else "A"
    return "win" if verdict == first_letter else "loss"


def compare(items: list[dict], endpoint: str, model: str, api_key: str | None = None, *, first: str = "tuned",
            second: str = "base", seed: int = 0, resamples: int = 1000, timeout: float = 60.0) -> dict:
    """Judge ``first`` against ``second`` on items {question, reference, first, second}.

    Sets item["outcome"] ('win'/'tie'/'loss'/None, for ``first``) and item["shown_as"] ('A'/'B').
    Returns the summary, or {"skipped": reason} when the endpoint fails.
    """
    swaps = swap_plan(len(items), seed)
    for i, (item, swapped) in enumerate(zip(items, swaps)):
        a, b = (item["second"], item["first"]) if swapped else (item["first"], item["second"])
        prompt = PAIRWISE_PROMPT.format(question=item["question"], reference=item.get("reference") or "-", a=a, b=b)
        try:
            reply = ask(endpoint, model, prompt, api_key, timeout)
        except JudgeDown as exc:
            for it in items:
                for key in ("outcome", "shown_as", "verdict"):
                    it.pop(key, None)
            where = "" if i == 0 else f" after {i} comparisons"
            return {"mode": "pairwise", "first": first, "second": second, "prompt": PAIRWISE_PROMPT,
                    "skipped": f"judge endpoint {endpoint} failed{where}: {exc}"}
        verdict = parse_verdict(reply)
        item["verdict"] = verdict
        item["shown_as"] = "B" if swapped else "A"
        item["outcome"] = outcome(verdict, swapped)
    return summarise(items, first, second, seed, resamples) | {
        "mode": "pairwise", "endpoint": endpoint, "model": model, "prompt": PAIRWISE_PROMPT}


def summarise(items: list[dict], first: str, second: str, seed: int = 0, resamples: int = 1000) -> dict:
    """Counts, rates with 95% bootstrap intervals and a sign-flip p-value of wins vs losses."""
    judged = [it for it in items if it.get("outcome") is not None]
    counts = {k: sum(it.get("outcome") == k for it in items) for k in ("win", "tie", "loss")}
    out: dict = {"first": first, "second": second, "n": len(items), "judged": len(judged),
                 "wins": counts["win"], "ties": counts["tie"], "losses": counts["loss"],
                 "unparsed": len(items) - len(judged),
                 "swapped": sum(it.get("shown_as") == "B" for it in items),
                 "position_picks": {p: sum(it.get("verdict") == p for it in items) for p in ("A", "B")}}
    if not judged:
        return out | {"win_rate": None, "tie_rate": None, "loss_rate": None, "score": None}
    win = mean_stats([float(it["outcome"] == "win") for it in judged])
    tie = mean_stats([float(it["outcome"] == "tie") for it in judged])
    loss = mean_stats([float(it["outcome"] == "loss") for it in judged])
    score = mean_stats([{"win": 1.0, "tie": 0.5, "loss": 0.0}[it["outcome"]] for it in judged])
    idx = resample_indices(len(judged), resamples, seed)
    for name, st in (("win_rate", win), ("tie_rate", tie), ("loss_rate", loss), ("score", score)):
        out[name] = st.value()
        out[f"{name}_ci"] = list(bootstrap_ci(st, idx))
    out["p"] = permutation_p(win, loss, resamples, seed)  # exchanging win/loss per example = "no preference"
    return out


def sentence(summary: dict) -> str:
    """One line for the CLI and the report."""
    if "skipped" in summary:
        return f"pairwise judge SKIPPED: {summary['skipped']}"
    f, s = summary["first"], summary["second"]
    head = (f"pairwise judge, {f} vs {s}: {summary['wins']} wins, {summary['ties']} ties, "
            f"{summary['losses']} losses, {summary['unparsed']} unparsed")
    if summary.get("win_rate") is None:
        return head
    lo, hi = summary["win_rate_ci"]
    return head + (f"; win rate {summary['win_rate']:.3f} [{lo:.3f}, {hi:.3f}], "
                   f"score (tie = 1/2) {summary['score']:.3f}, p={summary['p']:.3g}")
