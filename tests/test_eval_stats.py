"""Bootstrap intervals, paired tests and per-example metric statistics, pinned by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from strop import metrics as M
from strop.eval.analysis import comparisons, verdicts
from strop.eval.scores import generation_stats, nll_stats
from strop.eval.stats import (bootstrap_ci, mean_stats, paired_comparison, permutation_p, ratio_stats,
                              resample_indices)


def test_constant_metric_has_a_zero_width_interval():
    st = mean_stats([0.5] * 7)
    assert bootstrap_ci(st, resample_indices(7, 200, 0)) == (0.5, 0.5)


def test_bootstrap_interval_is_the_percentiles_of_resampled_means():
    values = [0.0, 1.0, 1.0, 0.0, 1.0]
    idx = resample_indices(5, 500, seed=3)
    expected = np.percentile(np.asarray(values)[idx].mean(axis=1), [2.5, 97.5])
    lo, hi = bootstrap_ci(mean_stats(values), idx)
    assert (lo, hi) == pytest.approx(tuple(expected))
    assert 0.0 <= lo < 0.6 < hi <= 1.0


def test_ratio_stats_weights_by_tokens_not_by_example():
    # two examples: NLL 2 over 1 token, NLL 2 over 3 tokens -> 4/4 = 1.0, not mean(2, 0.667)
    st = ratio_stats([2.0, 2.0], [1, 3])
    assert st.value() == pytest.approx(1.0)
    assert nll_stats([2.0, 2.0], [1, 3])["perplexity"].value() == pytest.approx(math.e)
    assert st.value(np.array([1, 1])) == pytest.approx(2 / 3)


def test_exact_permutation_p_value_by_hand():
    # 5 examples, a beats b by 1 on every one: only the two all-same-side swaps
    # (none swapped, all swapped) reach |diff| = 1, so p = 2 / 2**5
    a, b = mean_stats([1.0] * 5), mean_stats([0.0] * 5)
    assert permutation_p(a, b) == pytest.approx(2 / 32)
    # identical systems: nothing to explain, p = 1
    assert permutation_p(a, mean_stats([1.0] * 5)) == 1.0


def test_permutation_p_by_hand_with_one_disagreement():
    # a = [1,1,0], b = [0,0,0]: observed 2/3. Swapping changes the sign of the
    # per-example differences (1,1,0): |sum| = 2 for 4 of the 8 patterns -> p = 0.5
    assert permutation_p(mean_stats([1, 1, 0]), mean_stats([0, 0, 0])) == pytest.approx(0.5)


def test_sampled_permutation_test_finds_a_clear_difference():
    rng = np.random.default_rng(0)
    a = mean_stats(list(rng.normal(1.0, 0.1, 40)))
    b = mean_stats(list(rng.normal(0.0, 0.1, 40)))
    p = permutation_p(a, b, resamples=300)
    assert p == pytest.approx(1 / 301)  # +1 correction: never exactly 0
    cmp = paired_comparison(a, b, resample_indices(40, 300))
    assert cmp["diff"] == pytest.approx(a.value() - b.value())
    assert 0.9 < cmp["ci"][0] < cmp["diff"] < cmp["ci"][1] < 1.1


def test_generation_stats_aggregate_to_the_corpus_metrics():
    preds = ["the cat sat on a mat", "Paris.", "a quick brown dog", "hello world"]
    refs = ["the cat sat on the mat", "Paris", "the quick brown fox", "goodbye moon"]
    stats = generation_stats(preds, refs)
    plain = M.compute_all(preds, refs)
    for name, st in stats.items():
        assert st.value() == pytest.approx(plain[name]), name
    # a resample of the rows is the real corpus score of those rows
    idx = np.array([0, 0, 2, 3])
    sub = M.compute_all([preds[i] for i in idx], [refs[i] for i in idx])
    assert stats["bleu"].value(idx) == pytest.approx(sub["bleu"])
    assert stats["chrf"].value(idx) == pytest.approx(sub["chrf"])


def test_comparisons_name_the_winner_with_direction():
    stats = {"base": {"perplexity": ratio_stats([4.0] * 6, [2] * 6, math.exp), "rougeL": mean_stats([0.1] * 6)},
             "tuned": {"perplexity": ratio_stats([2.0] * 6, [2] * 6, math.exp), "rougeL": mean_stats([0.1] * 6)}}
    comps = {c["metric"]: c for c in comparisons(stats, 200, 0)}
    assert comps["perplexity"]["winner"] == "tuned"  # lower is better
    assert comps["perplexity"]["diff"] == pytest.approx(math.e - math.e ** 2)
    assert comps["perplexity"]["p"] == pytest.approx(2 / 64)
    assert comps["perplexity"]["significant"] is True
    assert comps["rougeL"]["winner"] is None
    lines = verdicts(list(comps.values()))
    assert lines[0].startswith("perplexity: tuned beats base") and "significant" in lines[0]
    assert "tie" in lines[1]
