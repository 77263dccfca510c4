"""LLM-as-judge: rubric grading (1-5) through any OpenAI-compatible endpoint.

Pairwise comparison (tuned vs base, position-swapped) lives in pairwise.py
and shares ``ask`` with this module.

Optional and never fatal: an endpoint that is down, or answers that cannot be
parsed, give a clearly marked skipped section or counted unparsed grades in the
report, never a crash. Uses only the standard library (no client dependency).
"""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

RUBRIC_PROMPT = """You are grading an assistant's answer against a reference answer.

Question:
{question}

Reference answer:
{reference}

Assistant's answer:
{answer}

Grade the assistant's answer from 1 to 5: 5 = says the same as the reference (wording may differ),
4 = mostly right with a small omission, 3 = partly right, 2 = mostly wrong, 1 = wrong or off-topic.
Reply with the grade only, a single digit."""

JUDGE_MODES = ("rubric", "pairwise")  # rubric: 1-5 grade per answer; pairwise: tuned vs base (pairwise.py)

_GRADE = re.compile(r"\b([1-5])\b")


def parse_grade(text: str) -> int | None:
    m = _GRADE.search(text or "")
    return int(m.group(1)) if m else None


class JudgeDown(Exception):
    """The endpoint could not be reached or answered with an HTTP error."""


def ask(endpoint: str, model: str, prompt: str, api_key: str | None, timeout: float) -> str:
    """The judge's reply text for one user message, at temperature 0."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}],
                       "temperature": 0, "max_tokens": 8}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(endpoint.rstrip("/") + "/chat/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = json.loads(resp.read())
        return data["choices"][0]["message"]["content"] or ""
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise JudgeDown(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None


def judge(rows: list[dict], endpoint: str, model: str, api_key: str | None = None, timeout: float = 60.0) -> dict:
    """Grade each prediction row; sets row["judge"]. Returns a summary or a ``skipped`` reason."""
    grades: dict[str, list[int]] = {}
    unparsed: dict[str, int] = {}
    for i, row in enumerate(rows):
        prompt = RUBRIC_PROMPT.format(question=row["prompt"], reference=row["reference"], answer=row["prediction"])
        try:
            reply = ask(endpoint, model, prompt, api_key, timeout)
        except JudgeDown as exc:
            for r in rows:
                r.pop("judge", None)
            where = "" if i == 0 else f" after {i} grades"
            return {"mode": "rubric", "skipped": f"judge endpoint {endpoint} failed{where}: {exc}", "prompt": RUBRIC_PROMPT}
        grade = parse_grade(reply)
        row["judge"] = grade
        system = row.get("system", "model")
        if grade is None:
            unparsed[system] = unparsed.get(system, 0) + 1
        else:
            grades.setdefault(system, []).append(grade)
    return {"mode": "rubric", "endpoint": endpoint, "model": model, "prompt": RUBRIC_PROMPT, "unparsed": unparsed,
            "mean": {s: sum(g) / len(g) for s, g in grades.items()}}
