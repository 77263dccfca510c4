"""Classification mode and group fairness, pinned to hand-computed values."""
from __future__ import annotations

import pytest

from strop.data.records import Conversation, Message
from strop.core.errors import StropError
from strop.eval.classification import UNPARSED, classification_metrics, parse_label, resolve_labels
from strop.eval.groups import classification_groups, score_groups

LABELS = ["positive", "negative", "neutral"]


@pytest.mark.parametrize("answer, expected", [
    ("Positive.", "positive"),                           # rule 1: the whole answer is the label
    ("  NEGATIVE!  ", "negative"),
    ("I think it is negative, not positive", "negative"),  # rule 2: earliest whole-word mention
    ("The sentiment: neutral", "neutral"),
    ("nonpositive feelings", UNPARSED),                  # not a whole word
    ("I cannot tell", UNPARSED),                         # rule 3
])
def test_parse_label_rule(answer, expected):
    assert parse_label(answer, LABELS) == expected


def test_parse_label_tie_prefers_longer_label():
    assert parse_label("very good indeed", ["good", "very good"]) == "very good"


def test_classification_metrics_by_hand():
    gold = ["a", "a", "b", "b", "c"]
    pred = ["a", "b", "b", UNPARSED, "c"]
    out = classification_metrics(pred, gold, ["a", "b", "c"])
    assert out["accuracy"] == pytest.approx(3 / 5)
    # per label: a P=1 R=1/2 F=2/3; b P=1/2 R=1/2 F=1/2; c P=1 R=1 F=1
    assert out["macro_precision"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert out["macro_recall"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert out["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    # micro over the label set: TP 3, FP 1 (the b for an a), FN 2 -> P 3/4, R 3/5
    assert out["micro_precision"] == pytest.approx(3 / 4)
    assert out["micro_recall"] == pytest.approx(3 / 5)
    assert out["micro_f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert out["confusion"]["columns"] == ["a", "b", "c", UNPARSED]
    assert out["confusion"]["matrix"] == [[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0]]
    assert out["unparsed"] == 1


def _conv(answer: str, line: int, **meta) -> Conversation:
    return Conversation([Message("user", "q"), Message("assistant", answer)], "f.jsonl", line, meta=meta)


def test_resolve_labels_from_references_and_label_column():
    labels, gold = resolve_labels([_conv("Yes", 1), _conv("no", 2)], ["yes", "no"], "f.jsonl")
    assert labels == ["yes", "no"] and gold == ["yes", "no"]
    labels, gold = resolve_labels([_conv("whatever", 1, label="b"), _conv("x", 2, label="a")], None, "f.jsonl")
    assert labels == ["a", "b"] and gold == ["b", "a"]


def test_resolve_labels_errors_are_one_line():
    with pytest.raises(StropError, match=r"f.jsonl:2: reference label 'maybe' is not one of --labels yes, no"):
        resolve_labels([_conv("yes", 1), _conv("maybe", 2)], ["yes", "no"], "f.jsonl")
    with pytest.raises(StropError, match=r"'neutral' never occurs in the references of f.jsonl"):
        resolve_labels([_conv("yes", 1), _conv("no", 2)], ["yes", "no", "neutral"], "f.jsonl")


def test_group_fairness_by_hand():
    gold = ["y", "n", "y", "n", "y", "n"]
    pred = ["y", "n", "y", "y", "n", "n"]
    groups = ["g1", "g1", "g1", "g2", "g2", "g2"]
    out = classification_groups(pred, gold, groups, ["y", "n"])
    assert out["groups"]["g1"]["accuracy"] == 1.0
    assert out["groups"]["g2"]["accuracy"] == pytest.approx(1 / 3)
    # selection rate of "y": g1 2/3, g2 1/3; of "n": g1 1/3, g2 2/3 -> DP diff 1/3
    assert out["demographic_parity_difference"] == pytest.approx(1 / 3)
    # label y: TPR g1 2/2, g2 0/1 -> 1; FPR g1 0/1, g2 1/2 -> 1/2 -> EO(y) = 1
    assert out["equalized_odds_difference"] == pytest.approx(1.0)
    assert out["accuracy_gap"] == pytest.approx(2 / 3)
    with pytest.raises(StropError, match="only one group"):
        classification_groups(pred, gold, ["g"] * 6, ["y", "n"])


def test_score_groups_by_hand():
    out = score_groups([1.0, 0.0, 1.0, 1.0], ["a", "a", "b", "b"])
    assert out["groups"]["a"] == {"n": 2, "score": 0.5}
    assert out["score_gap"] == pytest.approx(0.5)
