"""`strop data check | clean | split | preview | augment` on small planted files."""
from __future__ import annotations

import json

import pytest

from conftest import DEMO_DATA, PEER
from strop.cli import main
from strop.data import ANY_KIND, load
from strop.data import pii
from strop.data.check import check, format_report
from strop.data.clean import CleanOptions, clean, read_manifest
from strop.core.errors import StropError


def _chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


FACTS = [("rivers", "Rivers carry fresh water from mountains and hills down toward the sea over long distances."),
         ("volcanoes", "Volcanoes form where molten rock from deep inside the planet reaches the surface through cracks."),
         ("glaciers", "Glaciers are slow rivers of ice that carve wide valleys as they creep downhill over centuries."),
         ("deserts", "Deserts receive very little rain each year, so only hardy plants and animals can live there."),
         ("forests", "Forests store large amounts of carbon in their trunks, roots and soils across many decades."),
         ("oceans", "Oceans cover most of the surface of the planet and hold nearly all of its liquid water today.")]


@pytest.fixture
def dirty(tmp_path):
    rows = [_chat(f"Tell me something about {t}, please.", a) for t, a in FACTS]
    rows.append(rows[1])  # line 7: exact duplicate of line 2
    rows.append(_chat("Tell me something about volcanoes, please.", FACTS[1][1].replace("cracks.", "cracks!")))  # 8: near
    rows.append(_chat("My mail is ann.lee@example.org, what now?", "I will not keep your address, Ann."))  # 9: email
    rows.append(_chat("Pay with 4111 1111 1111 1111?", "Please never share a card number like that here."))  # 10: card
    rows.append(_chat("Is 4111 1111 1111 1112 a card?", "That number fails the Luhn check, so it is not valid."))  # 11
    rows.append(_chat("Hi", "Yes"))  # 12: short answer
    path = tmp_path / "dirty.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_pii_detectors_use_checksums():
    assert pii.luhn_ok("4111 1111 1111 1111") and not pii.luhn_ok("4111 1111 1111 1112")
    assert pii.iban_ok("GB82 WEST 1234 5698 7654 32") and not pii.iban_ok("GB82 WEST 1234 5698 7654 33")
    text = ("write to a@b.io or call +1 415 555 0132; card 4111-1111-1111-1111; IBAN DE89370400440532013000; "
            "host 10.0.0.7 or 2001:db8::1; key sk-abcdefghijklmnopqrstuvwx12; version 1.2.3, year 1999")
    kinds = [k for k, _, _ in pii.find(text)]
    assert kinds == ["email", "phone", "credit_card", "iban", "ipv4", "ipv6", "api_key"]
    assert pii.redact("mail a@b.io now")[0] == "mail [EMAIL] now"


def test_check_finds_planted_problems(dirty, smol_tokenizer, tmp_path):
    ev = tmp_path / "eval.jsonl"
    ev.write_text(json.dumps(_chat("Tell me something about deserts, please.", FACTS[3][1])) + "\n")
    r = check(str(dirty), tokenizer=smol_tokenizer, eval_path=str(ev), max_length=512)
    by = {f["code"]: f for f in r["findings"]}
    assert by["duplicate"]["count"] == 1 and by["duplicate"]["examples"][0].startswith(f"{dirty}:7 ")
    assert by["near_duplicate"]["count"] == 1 and f"{dirty}:8 " in by["near_duplicate"]["examples"][0]
    assert by["pii"]["count"] == 2 and r["pii"] == {"email": 1, "credit_card": 1}
    assert by["short_response"]["examples"] == [f"{dirty}:12"]
    assert by["leakage"]["count"] == 1 and by["leakage"]["severity"] == "error"
    assert r["tokens"]["truncated"] == 0 and r["rows"] == 12
    tight = check(str(dirty), tokenizer=smol_tokenizer, max_length=20)
    assert {f["code"] for f in tight["findings"]} >= {"truncated", "no_trainable_tokens"}
    assert tight["tokens"]["no_trainable"] == 12  # the template's system prompt alone passes 20 tokens
    assert "duplicate" in format_report(r)


def test_language_mix_and_diversity(tmp_path, smol_tokenizer):
    rows = [_chat(f"Q{i}", f"This is a plain English answer about topic number {i} with enough words.") for i in range(8)]
    rows += [_chat("Q", "Dies ist eine deutsche Antwort mit genug Wörtern, damit die Sprache erkannt wird.")] * 1
    rows += [_chat("Q2", "Ceci est une réponse en français avec assez de mots pour reconnaître la langue.")]
    path = tmp_path / "mix.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    r = check(str(path), tokenizer=smol_tokenizer)
    assert r["languages"]["share"]["en"] == 0.8 and {"de", "fr"} <= set(r["languages"]["share"])
    assert any(f["code"] == "language_mix" and f["count"] == 2 for f in r["findings"])
    assert 0 < r["diversity"]["distinct_1"] < r["diversity"]["distinct_2"] <= 1


def test_embedding_checks_are_optional_and_score_relevance(dirty, smol_tokenizer):
    plain = check(str(dirty), tokenizer=smol_tokenizer)
    assert "skipped" in plain["embeddings"]
    r = check(str(dirty), tokenizer=smol_tokenizer, embeddings=True, domain="geography: rivers, mountains, oceans, climate",
              min_relevance=0.25)
    scores = r["embeddings"]["relevance"]["scores"]
    assert len(scores) == 12 and min(scores[:6]) > max(scores[8], scores[11])  # nature facts beat chit-chat
    assert len(r["embeddings"]["map"]["xy"]) == 12 and r["embeddings"]["diversity"]["clusters"] >= 2


def test_clean_removes_duplicates_and_pii_with_manifest(dirty, tmp_path):
    out = tmp_path / "clean.jsonl"
    before = dirty.read_bytes()
    result = clean(str(dirty), str(out), CleanOptions(min_words=2))
    assert dirty.read_bytes() == before  # never edits the input
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    manifest = read_manifest(result["manifest"])
    got = {(e["line"], e["action"], e["reason"]) for e in manifest}
    assert got == {(7, "removed", "duplicate"), (8, "removed", "near_duplicate"), (12, "removed", "short_response"),
                   (9, "changed", "pii_redacted"), (10, "changed", "pii_redacted")}
    assert len(rows) == 12 - 3 and result["rows_out"] == 9
    text = out.read_text()
    assert "ann.lee@example.org" not in text and "4111 1111 1111 1111" not in text and "[EMAIL]" in text
    assert "4111 1111 1111 1112" in text  # fails Luhn: left alone
    dropped = clean(str(dirty), str(tmp_path / "d.jsonl"), CleanOptions(pii="drop"))
    assert dropped["counts"]["removed:pii"] == 2
    with pytest.raises(StropError, match="never edits input in place"):
        clean(str(dirty), str(dirty))


def test_split_groups_near_duplicates_and_stratifies(tmp_path):
    import random

    rng, words = random.Random(0), "apple river stone cloud lamp chair violin garden copper rocket tiger lemon".split()
    rows = []
    for i in range(40):
        base = " ".join(rng.choice(words) for _ in range(12)) + f" {i}"
        rows.append({**_chat(base, f"Item {i} is red, small and light."), "cat": "a" if i % 4 else "b"})
        rows.append({**_chat(base + ".", f"Item {i} is red, small and light!"), "cat": "a" if i % 4 else "b"})
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    tr, ev = tmp_path / "tr.jsonl", tmp_path / "ev.jsonl"
    assert main(["data", "split", str(path), "--train-out", str(tr), "--eval-out", str(ev), "--val-size", "0.25",
                 "--stratify", "cat", "--seed", "3"]) == 0
    train_rows = [json.loads(x) for x in tr.read_text().splitlines()]
    eval_rows = [json.loads(x) for x in ev.read_text().splitlines()]
    assert len(train_rows) + len(eval_rows) == 80 and len(eval_rows) == 22  # whole pairs closest to 25% per stratum
    items = lambda rs: {r["messages"][0]["content"].rstrip(".") for r in rs}  # noqa: E731
    assert not items(train_rows) & items(eval_rows)  # a near-duplicate pair never straddles
    assert sum(r["cat"] == "b" for r in eval_rows) == 6  # 25% of the 20 'b' rows is 5: three whole pairs


def test_augment_tags_dedups_and_stays_out_of_eval(tmp_path):
    src = DEMO_DATA / "persona_train.jsonl"
    out = tmp_path / "aug.jsonl"
    assert main(["data", "augment", str(src), "--output", str(out), "--ops", "synonym,swap,delete"]) == 0
    ds = load(out, kinds=ANY_KIND)
    aug = [c for c in ds.conversations if "strop_augmented" in c.row]
    orig = load(src)
    assert len(ds) - len(aug) == len(orig) and 0 < len(aug) <= len(orig)
    assert all(c.row["strop_augmented"]["origin"].startswith(str(src)) for c in aug)
    texts = [json.dumps(c.as_dicts()) for c in ds.conversations]
    assert len(set(texts)) == len(texts)
    by_where = {o.where: o for o in orig.conversations}
    assert all(c.reference == by_where[c.row["strop_augmented"]["origin"]].reference for c in aug)  # answers untouched
    assert all(c.as_dicts() != by_where[c.row["strop_augmented"]["origin"]].as_dicts() for c in aug)
    tr, ev = tmp_path / "tr.jsonl", tmp_path / "ev.jsonl"
    main(["data", "split", str(out), "--train-out", str(tr), "--eval-out", str(ev), "--val-size", "0.2"])
    assert "strop_augmented" not in ev.read_text()


def test_preview_marks_trained_tokens(capsys, tmp_path):
    rc = main(["data", "preview", str(DEMO_DATA / "persona_train.jsonl"), "-n", "1", "--no-color"])
    out = capsys.readouterr().out
    first = load(DEMO_DATA / "persona_train.jsonl").conversations[0]
    assert rc == 0 and f"[[{first.reference}<|im_end|>]]" in out
    page = tmp_path / "p.html"
    main(["data", "preview", str(DEMO_DATA / "persona_train.jsonl"), "-n", "2", "--html", str(page)])
    assert page.read_text().count("<mark>") == 2


@pytest.mark.parametrize("path", [DEMO_DATA / "persona_train.jsonl", PEER / "alpaca_en_demo.json"])
def test_cli_check_reports(path, tmp_path, capsys):
    js, page = tmp_path / "r.json", tmp_path / "r.html"
    assert main(["data", "check", str(path), "--json", str(js), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    report = json.loads(js.read_text())
    assert f"{report['rows']} conversations" in out and report["rows"] == len(load(path))
    assert "<svg" in page.read_text() and sum(report["tokens"]["histogram"]["counts"]) == report["rows"]


def _rewrite(body: dict) -> str:
    """Paraphrases as 'P<...>' and translates as 'FR<...>' / 'EN<...>'; an 'EMPTY' text comes back blank."""
    import re

    prompt = body["messages"][-1]["content"]
    text = prompt.split("\n\n", 1)[1]
    if prompt.startswith("Rewrite"):
        return f"P<{text}>"
    if "into French" in prompt:
        return f"FR<{text}>"
    return re.sub(r"^FR<(.*)>$", r"EN<\1>", text, flags=re.S) if "EMPTY" not in text else ""


def test_augment_paraphrase_and_backtranslate_through_an_endpoint(tmp_path, capsys):
    src = tmp_path / "src.jsonl"
    rows = [_chat("How tall is the tower?", "About 300 metres."), _chat("Where is it?", "In Paris."),
            _chat("EMPTY please", "Nothing.")]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    from conftest import fake_chat_endpoint

    requests = []
    out = tmp_path / "aug.jsonl"
    with fake_chat_endpoint(_rewrite, requests) as url:
        rc = main(["data", "augment", str(src), "--output", str(out), "--ops", "paraphrase,backtranslate",
                   "--per-row", "2", "--model", "judge", "--endpoint", url])
    seen = [r["body"]["messages"][-1]["content"] for r in requests]
    assert rc == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    aug = [r for r in got if "strop_augmented" in r]
    users = {r["strop_augmented"]["op"] + ":" + r["messages"][0]["content"] for r in aug}
    assert users == {"paraphrase:P<How tall is the tower?>", "backtranslate:EN<How tall is the tower?>",
                     "paraphrase:P<Where is it?>", "backtranslate:EN<Where is it?>", "paraphrase:P<EMPTY please>"}
    assert all(r["messages"][1]["content"] in ("About 300 metres.", "In Paris.", "Nothing.") for r in aug)  # answers kept
    assert any("into French" in p for p in seen) and any("into English" in p for p in seen)  # two hops
    assert "1 empty rewrites dropped" in capsys.readouterr().out  # the blank back-translation became no row
