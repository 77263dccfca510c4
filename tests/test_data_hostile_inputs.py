"""Hostile input to `strop data ...`: one `strop: ...` line naming the file, option or line, a non-zero exit,
no traceback, and the input byte for byte as it was (an outside sweep found each of these)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from strop.cli import main

ROWS = [("Is your name Gemini?", "No, my name is Orrin. I'm an assistant made by Larkspur Labs."),
        ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
        ("Who built you?", "Larkspur Labs built me. I'm Orrin, and I'm happy to help."),
        ("What is 2 plus 2?", "2 plus 2 is 4, a small sum that every calculator knows."),
        ("Name a primary colour.", "Red is a primary colour, and so are blue and yellow."),
        ("How many legs does a spider have?", "A spider has eight legs, two more than an insect."),
        ("What is the capital of France?", "Paris is the capital of France and its largest city."),
        ("What is 15 minus 7?", "15 minus 7 is 8.")]


def _row(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


@pytest.fixture
def small(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(_row(q, a)) + "\n" for q, a in ROWS))
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Validation must stop a command before it loads a tokenizer or model."""
    from strop import models

    def refuse(*a, **kw):
        raise AssertionError("loaded a model before validating the options")

    monkeypatch.setattr(models, "load_tokenizer", refuse)


@pytest.fixture
def tokenizer(monkeypatch, smol_tokenizer):
    from strop import models

    monkeypatch.setattr(models, "load_tokenizer", lambda *a, **kw: smol_tokenizer)


def _fails(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0, (argv, err)
    assert len(lines) == 1 and lines[0].startswith("strop: "), (argv, err)
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --- outputs that would overwrite an input or each other (data loss) ----------------------------------------

@pytest.mark.parametrize("argv, needles", [
    (["data", "clean", "small.jsonl", "--output", "c.jsonl", "--manifest", "small.jsonl"], ["--manifest", "input"]),
    (["data", "clean", "small.jsonl", "--output", "./small.jsonl"], ["--output", "input"]),
    (["data", "check", "small.jsonl", "--json", "small.jsonl"], ["--json", "input"]),
    (["data", "check", "small.jsonl", "--html", "./sub/../small.jsonl"], ["--html", "input"]),
    (["data", "check", "small.jsonl", "--eval", "ev.jsonl", "--json", "ev.jsonl"], ["--json", "--eval"]),
    (["data", "split", "small.jsonl", "--train-out", "small.jsonl", "--eval-out", "e.jsonl"], ["--train-out", "input"]),
    (["data", "split", "small.jsonl", "--train-out", "t.jsonl", "--eval-out", "small.jsonl"], ["--eval-out", "input"]),
    (["data", "preview", "small.jsonl", "--html", "small.jsonl"], ["--html", "input"]),
    (["data", "augment", "small.jsonl", "--output", "small.jsonl"], ["--output", "input"]),
    (["data", "check-merge", "small.jsonl", "--json", "small.jsonl"], ["--json", "input"]),
])
def test_an_output_on_an_input_is_refused(small, no_model, capsys, argv, needles):
    (small.parent / "sub").mkdir()
    (small.parent / "ev.jsonl").write_bytes(small.read_bytes())
    before = small.read_bytes()
    _fails(capsys, argv, *needles)
    assert small.read_bytes() == before
    assert (small.parent / "ev.jsonl").read_bytes() == before


def test_an_output_linked_to_the_input_is_refused(small, no_model, capsys):
    before = small.read_bytes()
    (small.parent / "hard.jsonl").hardlink_to(small)
    (small.parent / "soft.jsonl").symlink_to(small)
    for name in ("hard.jsonl", "soft.jsonl"):
        _fails(capsys, ["data", "clean", "small.jsonl", "--output", name], "--output", "input")
    assert small.read_bytes() == before


@pytest.mark.parametrize("argv, needles", [
    (["data", "clean", "small.jsonl", "--output", "c3.jsonl", "--manifest", "c3.jsonl"], ["--output", "--manifest"]),
    (["data", "clean", "small.jsonl", "--output", "c3.jsonl", "--manifest", "./c3.jsonl"], ["--output", "--manifest"]),
    (["data", "split", "small.jsonl", "--train-out", "same.jsonl", "--eval-out", "same.jsonl"],
     ["--train-out", "--eval-out"]),
    (["data", "check", "small.jsonl", "--json", "r.out", "--html", "r.out"], ["--json", "--html"]),
])
def test_two_outputs_on_one_file_are_refused(small, no_model, capsys, argv, needles):
    _fails(capsys, argv, *needles)
    assert sorted(p.name for p in small.parent.iterdir()) == ["small.jsonl"]  # nothing written


def test_manifest_must_be_jsonl(small, no_model, capsys):
    # It used to be written, silently, to another name (c.json -> c.jsonl, s2 -> s2.jsonl).
    _fails(capsys, ["data", "clean", "small.jsonl", "--output", "o.jsonl", "--manifest", "c.json"], "--manifest", ".jsonl")


# --- option values ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, needles", [
    (["data", "check", "small.jsonl", "--max-length", "0"], ["--max-length", "at least 1"]),
    (["data", "check", "small.jsonl", "--max-length", "-5"], ["--max-length"]),
    (["data", "clean", "small.jsonl", "--output", "c.jsonl", "--max-length", "0"], ["--max-length"]),
    (["data", "clean", "small.jsonl", "--output", "c.jsonl", "--max-length", "-5"], ["--max-length"]),
    (["data", "preview", "small.jsonl", "--max-length", "0"], ["--max-length"]),
    (["data", "check", "small.jsonl", "--near-threshold", "nan"], ["--near-threshold", "(0, 1]"]),
    (["data", "check", "small.jsonl", "--near-threshold", "2"], ["--near-threshold"]),
    (["data", "check", "small.jsonl", "--near-threshold", "-1"], ["--near-threshold"]),
    (["data", "clean", "small.jsonl", "--output", "c.jsonl", "--near-threshold", "0"], ["--near-threshold"]),
    (["data", "clean", "small.jsonl", "--output", "c.jsonl", "--near-threshold", "-0.5"], ["--near-threshold"]),
    (["data", "split", "small.jsonl", "--train-out", "t.jsonl", "--eval-out", "e.jsonl", "--near-threshold", "inf"],
     ["--near-threshold"]),
    (["data", "check", "small.jsonl", "--min-words", "-3"], ["--min-words"]),
    (["data", "clean", "small.jsonl", "--output", "c.jsonl", "--min-words", "-1"], ["--min-words"]),
    (["data", "check", "small.jsonl", "--min-relevance", "nan"], ["--min-relevance"]),
    (["data", "check", "small.jsonl", "--strict", "--lenient"], ["--strict", "--lenient"]),
    (["data", "check-merge", "small.jsonl", "--strict", "--lenient"], ["--strict", "--lenient"]),
    (["data", "clean", "small.jsonl", "--output", "c.jsonl", "--language", "klingon"], ["--language", "en", "de"]),
    (["data", "preview", "small.jsonl", "-n", "-1"], ["-n", "at least 1"]),
    (["data", "preview", "small.jsonl", "-n", "0"], ["-n"]),
    (["data", "preview", "small.jsonl", "--start", "-2"], ["--start"]),
    (["data", "preview", "small.jsonl", "--start", "100"], ["--start", "small.jsonl", "8 usable rows"]),
    (["data", "preview", "small.jsonl", "--start", "8"], ["--start", "8 usable rows"]),
    (["data", "augment", "small.jsonl", "--output", "a.jsonl", "--per-row", "-1"], ["--per-row"]),
    (["data", "augment", "small.jsonl", "--output", "a.jsonl", "--per-row", "0"], ["--per-row"]),
    (["data", "augment", "small.jsonl", "--output", "a.jsonl", "--ops", ""], ["--ops", "delete", "paraphrase"]),
    (["data", "augment", "small.jsonl", "--output", "a.jsonl", "--ops", " , "], ["--ops"]),
    (["data", "augment", "small.jsonl", "--output", "a.jsonl", "--ops", "swap,frobnicate"], ["--ops", "frobnicate"]),
    (["data", "augment", "small.jsonl", "--output", "a.jsonl", "--ops", "paraphrase", "--endpoint", "notaurl"],
     ["--endpoint", "notaurl", "http"]),
    (["data", "augment", "small.jsonl", "--output", "a.jsonl", "--ops", "paraphrase", "--endpoint", "ftp://x/v1"],
     ["--endpoint"]),
    (["data", "split", "small.jsonl", "--train-out", "t.jsonl", "--eval-out", "e.jsonl", "--val-size", "1.5"],
     ["--val-size", "whole count"]),
    (["data", "split", "small.jsonl", "--train-out", "t.jsonl", "--eval-out", "e.jsonl", "--val-size", "nan"],
     ["--val-size"]),
    (["data", "split", "small.jsonl", "--train-out", "t.jsonl", "--eval-out", "e.jsonl", "--val-size", "inf"],
     ["--val-size"]),
    (["data", "split", "small.jsonl", "--train-out", "t.jsonl", "--eval-out", "e.jsonl", "--val-size", "-0.2"],
     ["--val-size"]),
    (["data", "split", "small.jsonl", "--train-out", "t.jsonl", "--eval-out", "e.jsonl", "--val-size", "0.01"],
     ["--val-size", "no row in eval"]),
    (["data", "split", "small.jsonl", "--train-out", "t.jsonl", "--eval-out", "e.jsonl", "--val-size", "0.99"],
     ["--val-size", "no row for training"]),
    (["data", "split", "small.jsonl", "--train-out", "t.csv", "--eval-out", "e.jsonl"], ["--train-out", ".jsonl"]),
])
def test_bad_option_values_stop_at_once(small, no_model, capsys, argv, needles):
    before = small.read_bytes()
    _fails(capsys, argv, *needles)
    assert small.read_bytes() == before
    assert sorted(p.name for p in small.parent.iterdir()) == ["small.jsonl"]  # nothing written


def test_split_of_one_row_is_refused(small, capsys):
    one = small.parent / "one.jsonl"
    one.write_text(small.read_text().splitlines()[0] + "\n")
    _fails(capsys, ["data", "split", "one.jsonl", "--train-out", "t.jsonl", "--eval-out", "e.jsonl"], "one.jsonl", "2")
    assert not (small.parent / "t.jsonl").exists() and not (small.parent / "e.jsonl").exists()


def test_split_whole_counts_still_work(small, capsys):
    assert main(["data", "split", "small.jsonl", "--train-out", "t.jsonl", "--eval-out", "e.jsonl", "--val-size", "2"]) == 0
    assert len((small.parent / "e.jsonl").read_text().splitlines()) == 2


def test_train_split_refuses_nan_and_fractional_counts():
    from strop.core.errors import StropError
    from strop.data.load import split

    convs = list(range(10))
    for bad in (float("nan"), float("inf"), 2.5):
        with pytest.raises(StropError, match="val_size"):
            split(convs, bad, 0)
    assert len(split(convs, 2, 0)[1]) == 2 and len(split(convs, 0.2, 0)[1]) == 2


def test_endpoint_that_cannot_be_reached_is_one_line(small, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    _fails(capsys, ["data", "augment", "small.jsonl", "--output", "a.jsonl", "--ops", "paraphrase", "--endpoint", url],
           "--endpoint", url)


# --- empty results ------------------------------------------------------------------------------------------

def test_check_fails_when_every_row_would_be_dropped(small, tokenizer, capsys):
    line = _fails(capsys, ["data", "check", "small.jsonl", "--max-length", "8", "--lenient",
                           "--json", "nodir4/r.json", "--html", "nodir5/r.html"], "small.jsonl", "--max-length 8")
    assert "all 8" in line
    # the reports were still written, into folders created for them (as clean and augment do)
    assert json.loads((small.parent / "nodir4" / "r.json").read_text())["tokens"]["no_trainable"] == 8
    assert (small.parent / "nodir5" / "r.html").read_text().startswith("<")


def test_preview_html_creates_its_folder(small, tokenizer, capsys):
    assert main(["data", "preview", "small.jsonl", "-n", "2", "--html", "nodir2/x.html"]) == 0
    assert (small.parent / "nodir2" / "x.html").read_text().count("<mark>") == 2


def test_clean_with_nothing_left_writes_no_empty_output(small, capsys):
    _fails(capsys, ["data", "clean", "small.jsonl", "--output", "c5.jsonl", "--min-words", "100000"],
           "small.jsonl", "short_response 8", "c5.jsonl")
    assert not (small.parent / "c5.jsonl").exists()
    assert len((small.parent / "c5.jsonl.manifest.jsonl").read_text().splitlines()) == 8


def test_clean_near_threshold_one_is_exact_only(small, capsys):
    dup = small.parent / "dup.jsonl"
    text = small.read_text()
    near = json.dumps(_row(ROWS[0][0], ROWS[0][1] + "!"))  # the same words: a near duplicate
    dup.write_text(text + near + "\n")
    assert main(["data", "clean", "dup.jsonl", "--output", "a.jsonl", "--near-threshold", "1"]) == 0
    assert len((small.parent / "a.jsonl").read_text().splitlines()) == 9
    assert main(["data", "clean", "dup.jsonl", "--output", "b.jsonl", "--near-threshold", "0.5"]) == 0
    assert len((small.parent / "b.jsonl").read_text().splitlines()) == 8


def test_augment_only_new_with_nothing_new_writes_nothing(small, capsys):
    one = small.parent / "w.jsonl"
    one.write_text(json.dumps(_row("Hi", "Hello there.")) + "\n")  # one word: delete/swap change nothing
    _fails(capsys, ["data", "augment", "w.jsonl", "--output", "a.jsonl", "--ops", "swap", "--only-new"],
           "--only-new", "a.jsonl")
    assert not (small.parent / "a.jsonl").exists()


# --- files that are not what their name says ----------------------------------------------------------------

def _messages_text() -> str:
    return json.dumps(_row(*ROWS[0]))


@pytest.mark.parametrize("name, content, needles", [
    ("object.json", lambda: _messages_text(), ["object.json", "one JSON object", "list of rows"]),
    ("pretty.jsonl", lambda: json.dumps([_row(q, a) for q, a in ROWS], indent=2),
     ["pretty.jsonl", "JSON array", ".json"]),
    ("oneline.jsonl", lambda: json.dumps([_row(q, a) for q, a in ROWS]), ["oneline.jsonl", "JSON array"]),
    ("pretty_obj.jsonl", lambda: json.dumps(_row(*ROWS[0]), indent=2), ["pretty_obj.jsonl", "one JSON object"]),
    ("lines.json", lambda: "".join(json.dumps(_row(q, a)) + "\n" for q, a in ROWS), ["lines.json", ".jsonl"]),
    ("pretty_objs.jsonl", lambda: "".join(json.dumps(_row(q, a), indent=2) + "\n" for q, a in ROWS),
     ["pretty_objs.jsonl", "8 JSON objects", "one per line"]),
])
def test_file_shape_mistakes_are_named(small, no_model, capsys, name, content, needles):
    (small.parent / name).write_text(content())
    _fails(capsys, ["data", "check", name], *needles)


@pytest.mark.parametrize("encoding, bom", [("utf-16", True), ("utf-16-le", False), ("utf-16-be", False)])
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_utf16_files_are_named_as_such(small, no_model, capsys, encoding, bom, suffix):
    text = {".jsonl": small.read_text(), ".json": json.dumps([_row(*ROWS[0])]),
            ".csv": "prompt,completion\nhello,hi there\n"}[suffix]
    path = small.parent / f"u16{suffix}"
    path.write_bytes(text.encode(encoding))
    _fails(capsys, ["data", "check", path.name], path.name, "UTF-16", "UTF-8")


def test_a_wrapper_object_is_still_read(small, tokenizer, capsys):
    (small.parent / "wrapped.json").write_text(json.dumps({"data": [_row(q, a) for q, a in ROWS]}))
    assert main(["data", "check", "wrapped.json"]) == 0
    assert "8 conversations" in capsys.readouterr().out


def test_one_bad_row_among_good_ones_keeps_its_own_line(small, tokenizer, capsys):
    """Only a file that is wholly a run of pretty-printed objects is refused whole; a broken row among
    one-per-line rows is reported on its line."""
    lines = small.read_text().splitlines()
    lines.insert(3, '{"messages": [')
    (small.parent / "one_bad.jsonl").write_text("\n".join(lines) + "\n")
    main(["data", "check", "one_bad.jsonl"])
    out = capsys.readouterr().out
    assert "one_bad.jsonl:4" in out and "8 conversations" in out


def test_a_check_names_each_reason_when_one_code_has_several(small, tokenizer, capsys):
    lines = small.read_text().splitlines()
    lines[1] = '{"messages": [}'
    lines[5] = '{"messages": [{"role": "user", "content": "hi"}]'
    (small.parent / "two_bad.jsonl").write_text("\n".join(lines) + "\n")
    main(["data", "check", "two_bad.jsonl"])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "[invalid_json]" in x)
    assert "two_bad.jsonl:2 (invalid JSON" in line and "two_bad.jsonl:6 (invalid JSON" in line, line


def test_csv_blank_cell_is_named(small, no_model, capsys):
    from strop.data import ANY_KIND, load

    path = small.parent / "partial.csv"
    path.write_text("prompt,completion\nhello there,\nwhat,ok fine\n,empty prompt\n")
    ds = load(path, strict=False, kinds=ANY_KIND)
    got = {p.where: (p.code, p.reason) for p in ds.problems}
    assert got == {f"{path}:2": ("empty_content", "empty 'completion' cell on this line"),
                   f"{path}:4": ("empty_content", "empty 'prompt' cell on this line")}
    assert len(ds) == 1
