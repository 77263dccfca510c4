"""Eval metrics pinned to hand-computed values; perplexity; evaluate() and the report end to end."""
from __future__ import annotations

import json
import math
import shutil

import pytest
from conftest import write_jsonl

from strop.data.records import Conversation, Message
from strop.core.errors import StropError
from strop import metrics as M
from strop.eval import likelihood as L
from strop.report.html import format_table, plot_loss_curve, write_report


# -- generation metrics -------------------------------------------------------
def test_identical_strings_score_perfectly():
    refs = ["the cat sat on the mat", "a quick brown fox jumps over the lazy dog"]
    assert M.bleu(refs, refs)["bleu"] == pytest.approx(100.0)
    assert M.chrf(refs, refs)["chrf"] == pytest.approx(100.0)
    assert M.rouge(refs, refs) == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    assert M.exact_match(refs, refs)["exact_match"] == 1.0


def test_disjoint_strings_score_zero():
    out = M.compute_all(["alpha beta gamma delta"], ["one two three four"])
    assert out["bleu"] == 0.0
    assert out["rouge1"] == out["rouge2"] == out["rougeL"] == 0.0
    assert out["exact_match"] == out["normalized_exact_match"] == 0.0


def test_rouge_hand_worked():
    # ref:  the cat sat on the mat   (6 tokens)
    # pred: the cat lay on a mat     (6 tokens)
    # LCS = the cat on mat = 4 -> P = R = F = 4/6
    # unigram overlap = the, cat, on, mat = 4 -> F = 4/6
    # bigrams: only "the cat" shared, 5 each -> F = 1/5
    out = M.rouge(["the cat lay on a mat"], ["the cat sat on the mat"])
    assert out["rougeL"] == pytest.approx(4 / 6)
    assert out["rouge1"] == pytest.approx(4 / 6)
    assert out["rouge2"] == pytest.approx(1 / 5)


def test_rouge_is_a_mean_over_examples_and_stems():
    # "cats running" stems to "cat run": a perfect match with stemming on
    out = M.rouge(["cats running", "x y"], ["cat run", "p q"])
    assert out["rouge1"] == pytest.approx(0.5)
    assert out["rougeL"] == pytest.approx(0.5)


def test_exact_vs_normalized_exact_match():
    preds = ["Paris", "The Eiffel Tower.", "  42 "]
    refs = ["Paris", "eiffel   tower", "42"]
    assert M.exact_match(preds, refs)["exact_match"] == pytest.approx(2 / 3)
    assert M.normalized_exact_match(preds, refs)["normalized_exact_match"] == 1.0
    assert M.normalize("An Apple, the   PEAR!") == "apple pear"


def test_keyword_hit_rate_is_case_insensitive_substring():
    preds = ["I am Orrin.", "hello there", "ORRIN here", "orrinesque"]
    assert M.keyword_hit_rate(preds, ["orrin"] * 4)["keyword_hit_rate"] == pytest.approx(3 / 4)
    assert M.keyword_hits(["Tokyo!", "kyoto"], ["tokyo", "Tokyo"]) == [True, False]


def test_registry_names_and_empty_inputs_raise():
    assert set(M.METRICS) == {"bleu", "rouge", "chrf", "exact_match", "normalized_exact_match"}
    for name, fn in M.METRICS.items():
        with pytest.raises(StropError, match="no predictions"):
            fn([], [])
        with pytest.raises(StropError, match="references"):
            fn(["a"], ["a", "b"])
    with pytest.raises(StropError, match="no predictions"):
        M.keyword_hit_rate([], [])


# -- perplexity ---------------------------------------------------------------
def _conv(*turns: tuple[str, str]) -> Conversation:
    return Conversation([Message(r, c) for r, c in turns], source="mem", line=1)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from strop import models

    return models.load(str(tiny_model_dir))


CONVS = [
    _conv(("user", "Who are you?"), ("assistant", "I am Orrin.")),
    _conv(("user", "What is the capital of Japan, if you happen to know it?"), ("assistant", "Tokyo.")),
    _conv(("user", "Hi"), ("assistant", "Hello! How can I help you today?"),
          ("user", "Name?"), ("assistant", "Orrin, from Larkspur Labs.")),
]


def test_perplexity_matches_manual_masked_cross_entropy(tiny):
    import torch
    import torch.nn.functional as F

    from strop.data.render import render

    model, tok = tiny
    nll, count = 0.0, 0
    with torch.no_grad():
        for conv in CONVS:
            r = render(tok, conv, 512)
            logits = model(torch.tensor([r.input_ids])).logits[0]  # (T, V), no padding
            labels = torch.tensor(r.labels)
            keep = labels[1:] != -100
            nll += F.cross_entropy(logits[:-1][keep], labels[1:][keep], reduction="sum").item()
            count += int(keep.sum())
    # batch_size=2 forces a padded batch next to an unpadded one
    out = L.perplexity(model, tok, CONVS, 512, batch_size=2)
    assert out["tokens"] == count
    assert out["loss"] == pytest.approx(nll / count, rel=1e-4)
    assert out["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert math.isfinite(out["perplexity"]) and out["perplexity"] > 1


def test_perplexity_scores_only_assistant_tokens(tiny):
    from strop.data.render import render

    model, tok = tiny
    short = _conv(("user", "Hi"), ("assistant", "I am Orrin."))
    long = _conv(("user", "Hi " * 40 + "tell me your name please"), ("assistant", "I am Orrin."))
    n_answer = render(tok, short, 512).n_trainable
    assert 0 < n_answer < len(render(tok, short, 512).input_ids)
    for conv in (short, long):
        assert L.perplexity(model, tok, [conv], 512)["tokens"] == n_answer
    # a system prompt adds context, never scored tokens
    assert L.perplexity(model, tok, [short], 512, system_prompt="You are Orrin.")["tokens"] == n_answer
    assert L.perplexity(model, tok, CONVS, 512)["tokens"] == sum(render(tok, c, 512).n_trainable for c in CONVS)


def test_perplexity_empty_raises(tiny):
    model, tok = tiny
    with pytest.raises(StropError, match="no conversations"):
        L.perplexity(model, tok, [], 512)


# -- evaluate() end to end ----------------------------------------------------

def _rows(pairs):
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "keyword": k}
            for q, a, k in pairs]


@pytest.fixture
def eval_files(tmp_path):
    data = write_jsonl(tmp_path / "heldout.jsonl", _rows([
        ("What is your name?", "My name is Orrin.", "Orrin"),
        ("Who built you?", "Larkspur Labs built me.", "Larkspur"),
        ("Say hi.", "Hi, I'm Orrin.", "Orrin"),
    ]))
    general = write_jsonl(tmp_path / "general.jsonl", _rows([
        ("What is the capital of Japan?", "Tokyo.", "Tokyo"),
        ("What is 7 times 8?", "56.", "56"),
    ]))
    return data, general


def _check_outputs(out, systems, n_rows):
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["systems"]) == systems
    assert metrics["n"] == 3
    for scores in metrics["systems"].values():
        for key in ("loss", "perplexity", "tokens", "bleu", "rouge1", "rouge2", "rougeL", "chrf",
                    "exact_match", "normalized_exact_match", "keyword_hit_rate", "general_hit_rate"):
            assert math.isfinite(scores[key]), key
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == n_rows
    assert {"where", "prompt", "reference", "prediction", "hit", "system"} <= set(rows[0])
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "What is your name?" in page
    assert "<script" not in page and "http" not in page  # self-contained
    return metrics, page


def test_evaluate_plain_model(tiny_model_dir, eval_files, tmp_path):
    from strop.eval.run import evaluate

    data, general = eval_files
    out = tmp_path / "out"
    result = evaluate(str(tiny_model_dir), str(data), output=str(out), max_new_tokens=4, general=str(general))
    metrics, _ = _check_outputs(out, ["model"], 3 + 2)
    assert result["systems"] == metrics["systems"]


@pytest.mark.slow
def test_evaluate_run_dir_compares_base_and_tuned(tiny_model_dir, eval_files, tmp_path):
    from strop.eval.run import evaluate

    data, general = eval_files
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "final")
    (run / "final" / "strop_run.json").write_text(json.dumps({"system_prompt": "", "method": "full"}))
    (run / "config.yaml").write_text(f"base_model: {tiny_model_dir}\nmax_length: 256\n")
    write_jsonl(run / "metrics.jsonl", [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5, "eval_loss": 2.7},
                                         {"step": 2, "eval_loss": 2.6}])
    evaluate(str(run), str(data), max_new_tokens=4, general=str(general))
    out = run / "eval"
    metrics, page = _check_outputs(out, ["base", "tuned"], 2 * (3 + 2))
    # same weights on both sides: identical scores
    assert metrics["systems"]["base"]["loss"] == pytest.approx(metrics["systems"]["tuned"]["loss"])
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert 'src="loss_curve.png"' in page


# -- report -------------------------------------------------------------------
def test_plot_loss_curve_writes_png(tmp_path):
    rows = [{"step": s, "loss": 3.0 / s} for s in range(1, 6)] + [{"step": 5, "eval_loss": 0.9}]
    png = plot_loss_curve(rows, tmp_path / "curve.png")
    assert png is not None and (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert plot_loss_curve([], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_report_escapes_and_highlights_better_value(tmp_path):
    metrics = {"systems": {"base": {"perplexity": 20.0, "bleu": 10.0}, "tuned": {"perplexity": 5.0, "bleu": 30.0}}}
    preds = [{"system": s, "where": "f:1", "prompt": "<b>hi</b>", "reference": "ref",
              "prediction": "<script>x</script>", "hit": s == "tuned"} for s in ("base", "tuned")]
    page = write_report(tmp_path / "r.html", "t & t", metrics, preds, None).read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "t &amp; t" in page
    assert '<td class="num best">5.0000</td>' in page  # lower perplexity wins
    assert '<td class="num best">30.00</td>' in page  # higher BLEU wins
    assert "<img" not in page


def test_format_table_aligns_systems_as_columns():
    table = format_table({"systems": {"base": {"bleu": 1.5, "tokens": 12}, "tuned": {"bleu": 22.25}}})
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "base", "tuned"]
    assert lines[2].split() == ["bleu", "1.5000", "22.25"]
    assert lines[3].split() == ["tokens", "12", "-"]
    assert len({len(line) for line in lines}) == 1


def test_a_shared_prefix_run_once_gives_what_each_row_gives_whole(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from strop import models
    from strop.data.render import render

    system = "You are a careful assistant who answers in one short sentence and never guesses."
    convs = [_conv(("user", f"Describe a {who} who has just started a new job."), ("assistant", answer))
             for who in ("woman", "man", "nurse who") for answer in ("They are capable.", "They are late again.")]
    model, tok = models.load(str(tiny_model_dir))
    lora = get_peft_model(models.load(str(tiny_model_dir))[0],
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    rows = [(r.input_ids, r.labels) for r in (render(tok, c, 512, system_prompt=system) for c in convs)]
    for m in (model, lora):  # a plain model, and a peft one (how eval scores a tuned run)
        alone = [L.token_nll(m, tok, [row], 1) for row in rows]  # one row per pass: nothing shared
        shapes = []
        hook = m.register_forward_pre_hook(lambda _, args, kwargs: shapes.append(kwargs["input_ids"].shape),
                                           with_kwargs=True)
        together = L.example_nll(m, tok, convs, 512, system, batch_size=6)
        hook.remove()
        assert shapes[0][0] == 1 and shapes[0][1] >= L.SHARED_PREFIX_MIN and shapes[1][0] == 6  # prefix once, then the rest
        assert together[1] == [a[1][0] for a in alone]
        assert together[0] == pytest.approx([a[0][0] for a in alone], abs=1e-4)
