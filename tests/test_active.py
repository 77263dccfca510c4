"""Active learning: strategies on synthetic pools, scoring on the tiny model, merge validation, the loop."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from strop.active import curves
from strop.active.merge import merge
from strop.active.pool import PoolItem, read_pool
from strop.active.score import ScoreTable, load_scores, margin_of
from strop.active.select import STRATEGIES, Candidates, k_center_greedy, select, write_selection
from strop.cli import main
from strop.core.errors import StropError


def unit(rows) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def clusters(n_per: int = 6, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four clusters around orthogonal axes, loose enough that members are not near-duplicates."""
    rng = np.random.default_rng(seed)
    rows, ids = [], []
    for c in range(4):
        centre = np.eye(dim)[c] * 5
        for _ in range(n_per):
            rows.append(centre + rng.normal(0, 1.0, dim))
            ids.append(c)
    return unit(rows), np.array(ids)


def table_of(emb, signals: dict, labelled=None, choices=None) -> ScoreTable:
    items = [PoolItem(f"i{k}", [{"role": "user", "content": f"question number {k}"}], f"pool:{k + 1}")
             for k in range(len(emb))]
    drafts = [choices[0] if choices else f"draft {k}" for k in range(len(emb))]
    lab = np.zeros((0, emb.shape[1]), np.float32) if labelled is None else labelled
    return ScoreTable(items, drafts, signals, emb, lab, choices)


# -- strategies --------------------------------------------------------------
def test_k_center_picks_one_point_per_cluster():
    emb, cid = clusters()
    picked = k_center_greedy(emb, 4, np.zeros((0, 8), np.float32))
    assert sorted(cid[picked].tolist()) == [0, 1, 2, 3]


def test_k_center_avoids_clusters_that_are_already_labelled():
    emb, cid = clusters()
    labelled = np.vstack([emb[cid == 0][:1], emb[cid == 1][:1]])
    picked = k_center_greedy(emb, 2, labelled)
    assert sorted(cid[picked].tolist()) == [2, 3]


def test_uncertainty_picks_the_high_entropy_items():
    emb, _ = clusters()
    entropy = np.linspace(0.1, 2.0, len(emb))
    np.random.default_rng(1).shuffle(entropy)
    picked, _ = select(table_of(emb, {"entropy_mean": entropy.tolist()}), 3, "uncertainty", warn=lambda m: None)
    assert set(picked) == set(np.argsort(-entropy)[:3].tolist())


def test_uncertainty_prefers_the_smallest_label_margin_and_skips_batch_duplicates():
    emb = unit([[1, 0, 0], [1, 0, 0.001], [0, 1, 0], [0, 0, 1]])  # rows 0 and 1 are the same input
    margin = [0.01, 0.02, 0.5, 0.9]
    picked, unc = select(table_of(emb, {"margin": margin, "entropy_mean": [0, 0, 0, 0]}), 2, "uncertainty")
    assert picked == [0, 2]  # row 1 is nearly as unsure but duplicates row 0
    assert unc[0] == pytest.approx(0.99)


def test_hybrid_spreads_high_uncertainty_picks_across_clusters():
    emb, cid = clusters()
    unc = np.full(len(cid), 0.1)
    unc[np.flatnonzero(cid == 0)[:3]] = 0.9  # the most uncertain region
    unc[np.flatnonzero(cid == 2)[:3]] = 0.5  # the next one
    unc = unc + np.linspace(0, 0.01, len(unc))  # break ties
    table = table_of(emb, {"entropy_mean": unc.tolist()})
    hybrid, _ = select(table, 2, "hybrid")
    plain, _ = select(table, 2, "uncertainty")
    assert sorted(cid[hybrid].tolist()) == [0, 2]
    assert cid[plain].tolist() == [0, 0]


def test_random_is_seeded_and_distinct():
    emb, _ = clusters()
    table = table_of(emb, {})
    a, _ = select(table, 5, "random", seed=3)
    b, _ = select(table, 5, "random", seed=3)
    c, _ = select(table, 5, "random", seed=4)
    assert a == b and len(set(a)) == 5 and a != c


def test_every_strategy_returns_budget_distinct_items():
    emb, _ = clusters()
    cands = Candidates(emb, np.linspace(0, 1, len(emb)), np.zeros((0, 8), np.float32))
    for strategy in STRATEGIES.values():
        picked = strategy.pick(cands, 7, np.random.default_rng(0))
        assert len(set(picked)) == 7, strategy.name


def test_budget_larger_than_pool_is_one_line_error():
    emb, _ = clusters()
    with pytest.raises(StropError, match=r"--budget: 30 is more than the 24 selectable"):
        select(table_of(emb, {"entropy_mean": [0.0] * 24}), 30, "uncertainty")


def test_near_duplicates_of_labelled_data_are_skipped_with_a_count():
    emb, cid = clusters()
    labelled = emb[cid == 0]  # every cluster-0 item is itself labelled already
    warnings = []
    picked, _ = select(table_of(emb, {"entropy_mean": [1.0] * 24}, labelled), 4, "uncertainty", warn=warnings.append)
    assert not set(picked) & set(np.flatnonzero(cid == 0).tolist())
    assert "skipped 6 of 24" in warnings[0]


def test_unknown_signal_is_rejected():
    emb, _ = clusters()
    with pytest.raises(StropError, match="no 'margin'"):
        select(table_of(emb, {"entropy_mean": [0.0] * 24}), 2, "uncertainty", signal="margin")


def test_margin_of():
    assert margin_of([0.7, 0.2, 0.1]) == pytest.approx(0.5)
    assert margin_of([1.0]) == pytest.approx(1.0)


# -- pool input --------------------------------------------------------------
def test_empty_pool_is_an_error(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n")
    with pytest.raises(StropError, match="pool is empty"):
        read_pool(pool)


def test_pool_ids_and_inputs(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"prompt": "hello"}) + "\n" + json.dumps({"id": 7, "messages": [{"role": "user", "content": "hi"}]}) + "\n"
                    + json.dumps({"id": 7, "text": "again"}) + "\n")
    with pytest.raises(StropError, match=r"pool.jsonl:3: id '7' repeats .*pool.jsonl:2"):
        read_pool(pool)


# -- merge -------------------------------------------------------------------
@pytest.fixture
def selection(tmp_path) -> Path:
    emb, _ = clusters()
    table = table_of(emb[:4], {"margin": [0.1, 0.2, 0.3, 0.4]}, choices=["yes", "no"])
    write_selection(table, [0, 1, 2], [0.9, 0.8, 0.7, 0.6], tmp_path / "sel.csv", "uncertainty")
    return tmp_path / "sel.csv"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_selection_files_have_drafts_prefilled(selection):
    rows = read_csv(selection)
    assert [r["id"] for r in rows] == ["i0", "i1", "i2"]
    assert all(r["answer"] == r["draft"] == "yes" and r["reviewed"] == "" for r in rows)
    with pytest.raises(StropError, match="refusing to overwrite"):
        write_selection(table_of(clusters()[0], {}), [0], [0.0] * 24, selection, "random")


def test_merge_refuses_unreviewed_rows_then_merges_the_reviewed_ones(selection, tmp_path):
    rows = read_csv(selection)
    rows[0].update(answer="no", reviewed="yes")
    rows[1].update(reviewed="x")
    labelled = write_csv(tmp_path / "labelled.csv", rows)
    train = tmp_path / "train.jsonl"
    before = json.dumps({"messages": [{"role": "user", "content": "old"}, {"role": "assistant", "content": "kept"}]}) + "\n"
    train.write_text(before)
    with pytest.raises(StropError, match=r"1 rows are not labelled .*labelled.csv:4"):
        merge(labelled, train, selection=selection.with_suffix(".jsonl"))
    assert train.read_text() == before  # a refused merge changes nothing
    report = merge(labelled, train, selection=selection.with_suffix(".jsonl"), skip_unlabelled=True, warn=lambda m: None)
    assert (report.merged, report.corrected, report.accepted, len(report.unlabelled)) == (2, 1, 1, 1)
    text = train.read_text()
    assert text.startswith(before)
    new = [json.loads(line) for line in text.splitlines()[1:]]
    assert [r["id"] for r in new] == ["i0", "i1"]
    assert new[0]["messages"][-1] == {"role": "assistant", "content": "no"}
    again = merge(labelled, train, selection=selection.with_suffix(".jsonl"), skip_unlabelled=True, warn=lambda m: None)
    assert again.merged == 0 and again.already_present == 2 and train.read_text() == text


def test_merge_refuses_changed_inputs_unknown_ids_and_bad_labels(selection, tmp_path):
    sel = selection.with_suffix(".jsonl")
    base = [dict(r, reviewed="yes") for r in read_csv(selection)]
    changed = [dict(r) for r in base]
    changed[1]["input"] = "a different question"
    with pytest.raises(StropError, match="1 rows whose input differs"):
        merge(write_csv(tmp_path / "a.csv", changed), tmp_path / "t.jsonl", selection=sel)
    unknown = base + [dict(base[0], id="zzz"), dict(base[0], id="yyy")]
    with pytest.raises(StropError, match="2 labels for ids not in the selection"):
        merge(write_csv(tmp_path / "b.csv", unknown), tmp_path / "t.jsonl", selection=sel)
    bad = [dict(r) for r in base]
    bad[2]["answer"] = "maybe"
    with pytest.raises(StropError, match="1 answers that are not one of the selection's labels"):
        merge(write_csv(tmp_path / "c.csv", bad), tmp_path / "t.jsonl", selection=sel)
    assert not (tmp_path / "t.jsonl").exists()


def test_merge_keeps_a_prompt_completion_layout(selection, tmp_path):
    rows = [dict(r, reviewed="yes") for r in read_csv(selection)]
    train = tmp_path / "pc.jsonl"
    train.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    merge(write_csv(tmp_path / "sel-labelled.csv", rows), train, selection=selection.with_suffix(".jsonl"))
    last = json.loads(train.read_text().splitlines()[-1])
    assert last == {"id": "i2", "prompt": "question number 2", "completion": "yes"}


def test_cli_merge_error_is_one_line(selection, tmp_path, capsys):
    code = main(["al", "merge", str(selection), "--into", str(tmp_path / "t.jsonl")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "3 rows are not labelled" in err


# -- curves ------------------------------------------------------------------
def test_summary_counts_labels_to_reach_random_final():
    runs = {"random": {"0": [[10, 0.5], [20, 0.6], [30, 0.7]], "1": [[10, 0.5], [20, 0.6], [30, 0.7]]},
            "hybrid": {"0": [[10, 0.5], [20, 0.72], [30, 0.8]], "1": [[10, 0.5], [20, 0.68], [30, 0.8]]}}
    s = curves.summarize(runs)
    assert s["random_final"] == pytest.approx(0.7)
    assert s["strategies"]["hybrid"]["labels_to_random_final"] == 20
    assert s["strategies"]["hybrid"]["fraction_of_random_labels"] == pytest.approx(20 / 30)
    assert s["strategies"]["random"]["aulc"] == pytest.approx(0.6)
    assert "| hybrid |" in curves.format_summary(s)


# -- scoring and the loop on models -------------------------------------------
def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_select_on_tiny_model(tiny_model_dir, tmp_path, capsys):
    questions = ["Is the sky blue?", "Is fire cold?", "Is water wet?", "Do fish fly?", "Is snow hot?"]
    pool = write_rows(tmp_path / "pool.jsonl", [{"id": f"q{i}", "prompt": q} for i, q in enumerate(questions)])
    train = write_rows(tmp_path / "train.jsonl", [{"prompt": "Is fire cold?", "completion": "no"}])
    out = tmp_path / "scores"
    code = main(["al", "score", "--model", str(tiny_model_dir), "--pool", str(pool), "--output", str(out),
                 "--labels", "yes,no", "--train", str(train), "--samples", "2", "--max-new-tokens", "4"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "1 of 5 pool inputs already appear" in captured.err
    table = load_scores(out)
    assert [it.id for it in table.items] == ["q0", "q2", "q3", "q4"]
    assert table.embeddings.shape == (4, 384) and table.labelled.shape == (1, 384)
    vocab = np.log(49152)
    assert all(0 <= e <= vocab + 1e-4 for e in table.signals["entropy_mean"])
    assert all(m >= e for m, e in zip(table.signals["entropy_max"], table.signals["entropy_mean"]))
    assert all(p >= 1.0 for p in table.signals["perplexity"])
    assert all(0 <= m <= 1 for m in table.signals["margin"])
    assert all(d in (0.0, 0.5) for d in table.signals["disagreement"])
    assert set(table.drafts) <= {"yes", "no"}
    code = main(["al", "select", "--scores", str(out), "--budget", "2", "--strategy", "uncertainty",
                 "--output", str(tmp_path / "next.csv")])
    assert code == 0
    rows = read_csv(tmp_path / "next.csv")
    margins = dict(zip([it.id for it in table.items], table.signals["margin"]))
    assert sorted(margins[r["id"]] for r in rows) == sorted(margins.values())[:2]
    assert main(["al", "select", "--scores", str(out), "--budget", "9", "--strategy", "random",
                 "--output", str(tmp_path / "x.csv")]) == 2
    assert "9 is more than the 4 selectable" in capsys.readouterr().err


@pytest.mark.slow
def test_loop_on_tiny_model(tiny_model_dir, tmp_path):
    """One round of select -> reveal -> retrain (2 LoRA steps) -> eval through strop's SFT path."""
    from strop.active.loop import load_loop_config, run_loop

    qa = [(f"Is {n} even?", "yes" if n % 2 == 0 else "no") for n in range(8)]
    write_rows(tmp_path / "pool.jsonl", [{"id": f"p{i}", "prompt": q, "label": a} for i, (q, a) in enumerate(qa[:6])])
    write_rows(tmp_path / "eval.jsonl", [{"id": f"e{i}", "prompt": q, "label": a} for i, (q, a) in enumerate(qa[6:])])
    (tmp_path / "loop.yaml").write_text(
        f"pool: pool.jsonl\neval: eval.jsonl\nlearner: sft\nmodel: {tiny_model_dir}\nlabels: [yes, no]\n"
        "strategies: [uncertainty]\nseeds: [0]\ninitial: 2\ntrain_steps: 2\n"
        f"output_dir: {tmp_path / 'out'}\n")
    with pytest.raises(StropError, match=r"initial 2 \+ 5 rounds x 3 = 17 labels is more than the 6 pool items"):
        run_loop(load_loop_config(str(tmp_path / "loop.yaml"), {"rounds": 5, "budget": 3}))
    result = run_loop(load_loop_config(str(tmp_path / "loop.yaml"), {"rounds": 1, "budget": 2}), progress=lambda m: None)
    curve = result["curves"]["uncertainty"]["0"]
    assert [n for n, _ in curve] == [2, 4]
    assert all(acc in (0.0, 0.5, 1.0) for _, acc in curve)
    assert (tmp_path / "out" / "work" / "uncertainty-0" / "round-1" / "run" / "final").is_dir()  # retrained
    assert (tmp_path / "out" / "learning_curves.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "curves.json").read_text())["pool_size"] == 6


def test_loop_drops_pool_items_that_are_in_the_eval_set(tmp_path):
    from strop.active.loop import LoopConfig, load_data

    rows = [{"id": f"p{i}", "prompt": f"ticket {i}", "label": "a" if i % 2 else "b"} for i in range(10)]
    write_rows(tmp_path / "pool.jsonl", rows)
    write_rows(tmp_path / "eval.jsonl", [dict(rows[0], id="e0"), dict(rows[1], id="e1")])
    write_rows(tmp_path / "nolabel.jsonl", [{"prompt": "x"}])
    warnings = []
    cfg = LoopConfig(pool=str(tmp_path / "pool.jsonl"), eval=str(tmp_path / "eval.jsonl"), rounds=1, budget=2, initial=2)
    pool, held = load_data(cfg.validate(), warn=warnings.append)
    assert len(pool) == 8 and "2 pool inputs also appear in the eval set" in warnings[0]
    cfg.eval = str(tmp_path / "nolabel.jsonl")
    with pytest.raises(StropError, match="1 of 1 rows have no label"):
        load_data(cfg)
