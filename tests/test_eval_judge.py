"""LLM-as-judge against a small local fake OpenAI-compatible server, and a down endpoint."""
from __future__ import annotations

import pytest

from strop.eval.judge import RUBRIC_PROMPT, judge, parse_grade

from conftest import fake_chat_endpoint, free_port


JUDGE_SEEN: list[dict] = []


def _grade(body: dict) -> str:
    """Grades 5 when the answer repeats the reference, else 2; 'garbled' answers get prose."""
    prompt = body["messages"][0]["content"]
    reference = prompt.split("Reference answer:\n")[1].split("\n\n")[0]
    answer = prompt.split("Assistant's answer:\n")[1].split("\n\n")[0]
    return "I refuse to grade" if answer == "garbled" else ("5" if answer == reference else "Grade: 2")


@pytest.fixture
def fake_endpoint():
    with fake_chat_endpoint(_grade, JUDGE_SEEN) as url:
        yield url


def _rows():
    return [{"system": s, "prompt": "Capital of France?", "reference": "Paris", "prediction": p}
            for s, p in (("base", "Lyon"), ("base", "garbled"), ("tuned", "Paris"), ("tuned", "Paris"))]


def test_parse_grade():
    assert parse_grade("4") == 4
    assert parse_grade("Grade: 3/5") == 3
    assert parse_grade("nothing") is None
    assert parse_grade("10") is None  # not a 1-5 digit on its own


def test_judge_grades_through_an_openai_compatible_endpoint(fake_endpoint):
    rows = _rows()
    out = judge(rows, fake_endpoint, "fake-judge", api_key="k")
    assert [r["judge"] for r in rows] == [2, None, 5, 5]
    assert out["mean"] == {"base": 2.0, "tuned": 5.0}
    assert out["unparsed"] == {"base": 1}
    assert out["prompt"] == RUBRIC_PROMPT
    first = JUDGE_SEEN[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer k"
    assert first["body"]["model"] == "fake-judge" and first["body"]["temperature"] == 0


def test_down_endpoint_is_a_marked_skip_not_a_crash():
    rows = _rows()
    out = judge(rows, f"http://127.0.0.1:{free_port()}/v1", "m", timeout=5)
    assert out["skipped"].startswith("judge endpoint http://127.0.0.1:")
    assert "failed" in out["skipped"]
    assert all("judge" not in r for r in rows)  # no half-graded rows left behind


# ---- pairwise mode -------------------------------------------------------------------------------

PAIR_SEEN: list[dict] = []


def _prefer_longer(body: dict) -> str:
    """Prefers the longer answer, says TIE on equal length, prose for 'garbled'; 'A' answered as 'Answer A'."""
    prompt = body["messages"][0]["content"]
    a = prompt.split("Answer A:\n")[1].split("\n\nAnswer B:")[0]
    b = prompt.split("Answer B:\n")[1].split("\n\nWhich answer")[0]
    if "garbled" in (a, b):
        return "I cannot decide between a and b"
    if len(a) == len(b):
        return "TIE"
    return "Answer A" if len(a) > len(b) else "B"


@pytest.fixture
def pairwise_endpoint():
    with fake_chat_endpoint(_prefer_longer, PAIR_SEEN) as url:
        yield url


def _pairs():
    # tuned longer on 5, shorter on 2, equal on 2, one unparseable
    tuned = ["a long answer"] * 5 + ["x"] * 2 + ["same"] * 2 + ["garbled"]
    base = ["short"] * 5 + ["longer one"] * 2 + ["SAME"] * 2 + ["whatever"]
    return [{"question": f"q{i}", "reference": "r", "first": t, "second": b}
            for i, (t, b) in enumerate(zip(tuned, base))]


def test_parse_verdict():
    from strop.eval.pairwise import parse_verdict

    assert parse_verdict("A") == "A" and parse_verdict(" b. ") == "B" and parse_verdict("Tie") == "tie"
    assert parse_verdict("Answer B is better") == "B" and parse_verdict("Verdict: A") == "A"
    assert parse_verdict("Both are fine, it's a tie") == "tie"
    assert parse_verdict("I like a lot of things") is None and parse_verdict("") is None


def test_swap_plan_is_balanced_and_seeded():
    from strop.eval.pairwise import outcome, swap_plan

    plan = swap_plan(10, seed=3)
    assert sum(plan) == 5 and plan == swap_plan(10, seed=3) and plan != [False] * 5 + [True] * 5
    assert outcome("A", swapped=False) == "win" and outcome("A", swapped=True) == "loss"
    assert outcome("B", swapped=True) == "win" and outcome("tie", True) == "tie" and outcome(None, False) is None


def test_pairwise_counts_and_undoes_position_swaps(pairwise_endpoint):
    from strop.eval.pairwise import PAIRWISE_PROMPT, compare

    items = _pairs()
    out = compare(items, pairwise_endpoint, "fake", seed=1, resamples=200)
    # the judge sees content, not system names: the longer answer wins wherever it was shown
    assert (out["wins"], out["ties"], out["losses"], out["unparsed"]) == (5, 2, 2, 1)
    assert out["n"] == 10 and out["judged"] == 9 and out["swapped"] == 5
    assert [it["outcome"] for it in items] == ["win"] * 5 + ["loss"] * 2 + ["tie"] * 2 + [None]
    # swapped items really showed the tuned answer second
    for item, prompt in zip(items, (r["body"]["messages"][0]["content"] for r in PAIR_SEEN)):
        shown_a = prompt.split("Answer A:\n")[1].split("\n\nAnswer B:")[0]
        assert shown_a == (item["second"] if item["shown_as"] == "B" else item["first"])
    assert {it["shown_as"] for it in items} == {"A", "B"}
    assert out["position_picks"]["A"] + out["position_picks"]["B"] == 7
    assert out["win_rate"] == pytest.approx(5 / 9) and out["loss_rate"] == pytest.approx(2 / 9)
    assert out["score"] == pytest.approx(6 / 9)
    lo, hi = out["win_rate_ci"]
    assert 0 <= lo <= 5 / 9 <= hi <= 1
    assert 0 < out["p"] <= 1
    assert out["prompt"] == PAIRWISE_PROMPT and "Reply with exactly one of: A, B, TIE." in out["prompt"]


def test_pairwise_down_endpoint_is_a_marked_skip():
    from strop.eval.pairwise import compare, sentence

    items = _pairs()
    out = compare(items, f"http://127.0.0.1:{free_port()}/v1", "m", timeout=5)
    assert out["skipped"].startswith("judge endpoint http://127.0.0.1:") and "prompt" in out
    assert all("outcome" not in it for it in items)
    assert sentence(out).startswith("pairwise judge SKIPPED")


def test_collect_pairwise_section_and_report(pairwise_endpoint, tmp_path):
    """The eval pipeline's judge step in pairwise mode, and its report section (no models needed)."""
    from types import SimpleNamespace

    from strop.eval.collect import _pairwise
    from strop.eval.report import judge_section, prompts_section

    items = _pairs()
    preds = [{"system": s, "set": "eval", "prompt": it["question"], "reference": "r",
              "prediction": it["first" if s == "tuned" else "second"]} for s in ("base", "tuned") for it in items]
    opts = SimpleNamespace(judge_endpoint=pairwise_endpoint, judge_model="fake", judge_api_key=None,
                           judge_mode="pairwise", seed=1, resamples=100)
    out = _pairwise(preds, opts)
    (pair,) = out["pairs"]
    assert pair["first"] == "tuned" and pair["second"] == "base" and pair["wins"] == 5
    tuned_rows = [r for r in preds if r["system"] == "tuned"]
    assert tuned_rows[0]["judge_vs_base"]["outcome"] == "win"
    page = judge_section({"judge": out, "intervals": {}}) + prompts_section({"judge": out})
    assert "5 wins, 2 ties, 2 losses, 1 unparsed" in page and "Reply with exactly one of" in page

    down = _pairwise(preds, SimpleNamespace(**{**vars(opts), "judge_endpoint": f"http://127.0.0.1:{free_port()}/v1"}))
    assert "skipped" in down and "SKIPPED" in judge_section({"judge": down, "intervals": {}})


def test_pairwise_needs_base_and_tuned(tmp_path):
    from strop.core.errors import StropError
    from strop.eval.run import Options, _check_judge
    from strop.eval.systems import Spec

    with pytest.raises(StropError, match="--judge-mode pairwise: compares tuned with base"):
        _check_judge(Options(judge_endpoint="http://x/v1", judge_mode="pairwise"), [Spec("model", "m")])
    with pytest.raises(StropError, match="--judge-mode: 'best' is not one of rubric, pairwise"):
        _check_judge(Options(judge_endpoint="http://x/v1", judge_mode="best"), [Spec("model", "m")])
    _check_judge(Options(judge_endpoint="http://x/v1", judge_mode="pairwise"), [Spec("base", "b"), Spec("tuned", "t")])


def test_position_bias_cancels_out():
    from strop.eval.pairwise import compare

    with fake_chat_endpoint(lambda body: "A") as url:  # a judge with pure position bias
        out = compare(_pairs(), url, "biased", resamples=100)
    assert out["position_picks"] == {"A": 10, "B": 0}
    assert (out["wins"], out["losses"]) == (5, 5) and out["score"] == 0.5 and out["p"] == 1.0
