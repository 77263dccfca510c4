"""`--shard I/N` batch jobs and their merges: a merged result equals one job over everything."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from strop.cli import main
from strop.core.errors import StropError
from strop.core.shard import Shard, in_order, parse


@pytest.mark.parametrize("text", ["4/4", "a/b", "-1/3", "1", "2/0"])
def test_bad_shard_names_the_option(text):
    with pytest.raises(StropError, match="option --shard: expected I/N"):
        parse(text)


@pytest.mark.parametrize("n_rows, n_parts", [(10, 3), (7, 7), (100, 8), (5, 1)])
def test_parts_cover_every_row_once_in_order(n_rows, n_parts):
    rows = list(range(n_rows))
    assert [r for i in range(n_parts) for r in Shard(i, n_parts).take(rows)] == rows


def test_merge_refuses_an_incomplete_set():
    part = lambda i, n: (f"p{i}", {"index": i, "count": n}, i)  # noqa: E731
    assert in_order([part(2, 3), part(0, 3), part(1, 3)], "x") == [0, 1, 2]
    with pytest.raises(StropError, match="shard\\(s\\) 1 of 3 missing"):
        in_order([part(0, 3), part(2, 3)], "x")
    with pytest.raises(StropError, match="given twice"):
        in_order([part(0, 2), part(0, 2), part(1, 2)], "x")
    with pytest.raises(StropError, match="different splits"):
        in_order([part(0, 2), part(1, 3)], "x")


# -- strop data check --------------------------------------------------------------
def _rows() -> list[dict]:
    rows = []
    for i in range(30):  # rows 21..30 repeat rows 1..10: duplicates that cross every part boundary
        k = i % 20
        answer = f"Answer {k} explains the topic in some detail for the reader." + (" long" * 80 if k == 3 else "")
        rows.append({"messages": [{"role": "user", "content": f"Question {k}: what about topic {k}?"},
                                  {"role": "assistant", "content": answer}]})
    rows.append({"messages": [{"role": "user", "content": "contact?"}, {"role": "assistant", "content": "ok"}]})
    rows.append({"messages": [{"role": "user", "content": "mail"},
                              {"role": "assistant", "content": "Write to jane.doe@example.com any time you like."}]})
    rows.append({"nonsense": True})
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sharded_check_merges_to_the_whole_report(smol_tokenizer, tmp_path):
    from strop.data.check import check
    from strop.data.check_shards import merge

    data = _write(tmp_path / "d.jsonl", _rows())
    held = _write(tmp_path / "eval.jsonl", _rows()[5:7])
    opts = dict(tokenizer=smol_tokenizer, max_length=96, eval_path=str(held))
    whole = check(str(data), **opts)
    merged = merge([check(str(data), shard=Shard(i, 4), **opts) for i in range(4)])
    for key in ("rows", "rows_read", "skipped", "problems", "roles", "tokens", "pii", "leakage", "kind", "format"):
        assert merged[key] == whole[key], key
    assert merged["duplicates"]["exact"] == whole["duplicates"]["exact"] == 10
    exact = {f["code"]: f for f in merged["findings"]}
    for code, f in {f["code"]: f for f in whole["findings"]}.items():
        if code != "near_duplicate":
            assert (exact[code]["count"], exact[code]["severity"]) == (f["count"], f["severity"]), code
    assert exact["duplicate"]["examples"] == {f["code"]: f for f in whole["findings"]}["duplicate"]["examples"]
    assert merged["errors"] == whole["errors"] and merged["size_guidance"] == whole["size_guidance"]
    assert merged["diversity"]["distinct_2"] >= whole["diversity"]["distinct_2"]  # an upper bound, as documented


def test_check_parts_and_merge_on_the_command_line(tmp_path, tiny_model_dir, capsys):
    data = _write(tmp_path / "d.jsonl", _rows()[:30])
    base = ["data", "check", str(data), "--base-model", str(tiny_model_dir)]
    assert main([*base, "--shard", "0/2"]) == 2
    assert "option --shard: also pass --json" in capsys.readouterr().err
    parts = [str(tmp_path / f"p{i}.json") for i in range(2)]
    for i, part in enumerate(parts):
        assert main([*base, "--shard", f"{i}/2", "--json", part]) == 0
    assert main(["data", "check-merge", parts[0], "--json", str(tmp_path / "m.json")]) == 2
    assert "shard(s) 1 of 2 missing" in capsys.readouterr().err
    assert main(["data", "check-merge", *reversed(parts), "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "merged 2 parts" in out and "exact duplicate conversations: 10" in out
    assert json.loads((tmp_path / "m.json").read_text())["rows"] == 30


# -- strop al score ------------------------------------------------------------------
@pytest.fixture
def one_thread():
    """Score with one thread: OpenMP threads spinning on a busy shared CPU cost far more than they give."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sharded_scoring_merges_to_the_whole_table(tiny_model_dir, tmp_path, capsys, one_thread):
    from strop.active.score import load_scores

    questions = ["Is the sky blue?", "Is fire cold?", "Is water wet?", "Do fish fly?", "Is snow hot?"]
    pool = _write(tmp_path / "pool.jsonl", [{"id": f"q{i}", "prompt": q} for i, q in enumerate(questions)])
    train = _write(tmp_path / "train.jsonl", [{"prompt": "Is water wet?", "completion": "yes"}])
    common = ["al", "score", "--model", str(tiny_model_dir), "--pool", str(pool), "--labels", "yes,no",
              "--train", str(train), "--samples", "2", "--max-new-tokens", "3"]
    assert main([*common, "--output", str(tmp_path / "whole")]) == 0
    for i in range(3):
        assert main([*common, "--shard", f"{i}/3", "--output", str(tmp_path / f"part{i}")]) == 0
    parts = [str(tmp_path / f"part{i}") for i in (2, 0, 1)]
    assert main(["al", "score-merge", *parts[:2], "--output", str(tmp_path / "bad")]) == 2
    assert main(["al", "score-merge", *parts, "--output", str(tmp_path / "merged")]) == 0
    capsys.readouterr()
    whole, merged = load_scores(tmp_path / "whole"), load_scores(tmp_path / "merged")
    assert [it.id for it in merged.items] == [it.id for it in whole.items] == ["q0", "q1", "q3", "q4"]
    assert merged.drafts == whole.drafts and merged.choices == whole.choices
    for name, values in whole.signals.items():
        np.testing.assert_allclose(merged.signals[name], values, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(merged.embeddings, whole.embeddings, atol=1e-5)
    np.testing.assert_allclose(merged.labelled, whole.labelled, atol=1e-6)
