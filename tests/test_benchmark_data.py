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


def test_rejudge_applies_a_widened_keyword_to_the_answers_kept(tmp_path, monkeypatch):
    import general_wide

    qfile = tmp_path / "q.jsonl"
    qs = [("What is the capital of Poland?", "Warsaw|Warszawa"), ("What is 2 plus 2?", "4|four")]
    qfile.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                      {"role": "assistant", "content": k.split("|")[0]}],
                                         "keyword": k}) + "\n" for q, k in qs))
    monkeypatch.setattr(general_wide, "QUESTIONS", qfile)
    poland, two = (q for q, _ in qs)
    out = {"calibration": {"base": {poland: {"answer": "Warsaw.", "ok": True}, two: {"answer": "4", "ok": True}},
                           "noised": [{"lost": [], "answers_lost": {}}], "stable": [poland, two]},
           "runs": [{"run": "kept-all", "right": 0, "lost": [poland, two], "lost_stable": [poland, two],
                     "answers": {poland: "Warszawa is the capital.", two: "five"}, "answers_lost": {}},
                    {"run": "kept-lost", "right": 0, "lost": [poland, two], "lost_stable": [poland, two],
                     "answers_lost": {poland: "It is Warszawa.", two: "five"}}]}
    general_wide.rejudge(out)
    for r in out["runs"]:
        assert r["lost_stable"] == [two] and r["lost"] == [two] and r["right"] == 1, r
    general_wide.rejudge(out)  # again: nothing changes
    assert [r["right"] for r in out["runs"]] == [1, 1]
