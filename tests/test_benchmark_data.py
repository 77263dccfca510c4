"""The benchmark question files are data the figures in docs/quality.md rest on: check them like code."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from general_wide import QUESTIONS, word_hit  # noqa: E402


def test_word_hit_matches_keywords_at_the_start_of_a_word_only():
    assert word_hit("We hear with our ears.", "ear")
    assert not word_hit("I can hear you.", "ear")
    assert word_hit("There are 7 days.", "seven|7") and not word_hit("There are 17 days.", "seven|7")
    assert word_hit("A SPHERICAL ball", "round|spher")
    assert not word_hit("", "Paris")


def test_every_wide_question_is_unique_and_its_own_answer_holds_its_keyword():
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    questions = [r["messages"][0]["content"] for r in rows]
    assert len(rows) == 120 and len(set(questions)) == len(questions)
    for r in rows:
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert word_hit(r["messages"][1]["content"], r["keyword"]), r
