"""Every command that writes checks its output paths before any work (issue 19 item 11).

A read-only output, a file where a directory is needed (or the reverse), or a
parent that is a file: one ``strop: ...`` line naming the path, exit 2, no
traceback, and nothing loaded or written first. ``export`` has its own tests
(test_export.py).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import strop_cmd

RO = Path("/sys/strop-out")  # sysfs refuses new files even to root


class LoadedAModel(BaseException):
    """Raised by the model loaders below: not an Exception, so nothing on the way can swallow it."""


@pytest.fixture(scope="session")
def read_only() -> Path:
    try:
        RO.mkdir()
    except OSError:
        return RO
    RO.rmdir()
    pytest.skip("/sys is writable here, so it cannot stand in for a read-only location")


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if a command gets as far as resolving or loading a model."""
    from strop import models

    def refuse(*a, **kw):
        raise LoadedAModel(a[:1])

    for name in ("resolve", "load_tokenizer", "load_model", "load"):
        monkeypatch.setattr(models, name, refuse)
    import subprocess as sp

    monkeypatch.setattr(sp, "Popen", refuse)  # compare trains in subprocesses


@pytest.fixture
def files(tmp_path, chat_file, tiny_model_dir) -> dict:
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("not a directory\n")
    a_dir = tmp_path / "a-dir"
    a_dir.mkdir()
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"pool: {chat_file}\neval: {chat_file}\n")
    return {"data": str(chat_file), "model": str(tiny_model_dir), "file": str(a_file), "dir": str(a_dir),
            "loop": str(loop), "tmp": str(tmp_path)}


# (command, the output path it is given); {ro} is a read-only location, {file}/{dir} an existing file/directory
CASES = {
    "data check --json": ["data", "check", "{data}", "--base-model", "{model}", "--json", "{ro}/report.json"],
    "data check --html": ["data", "check", "{data}", "--base-model", "{model}", "--html", "{ro}/report.html"],
    "data check --json is a dir": ["data", "check", "{data}", "--base-model", "{model}", "--json", "{dir}"],
    "data check-merge --json": ["data", "check-merge", "{data}", "--json", "{ro}/merged.json"],
    "data clean --output": ["data", "clean", "{data}", "--base-model", "{model}", "--output", "{ro}/clean.jsonl"],
    "data clean --output is a dir": ["data", "clean", "{data}", "--base-model", "{model}", "--output", "{dir}"],
    "data clean --manifest": ["data", "clean", "{data}", "--base-model", "{model}", "--output", "{tmp}/c.jsonl",
                              "--manifest", "{ro}/manifest.jsonl"],
    "data split --train-out": ["data", "split", "{data}", "--train-out", "{ro}/train.jsonl",
                               "--eval-out", "{tmp}/eval.jsonl"],
    "data split --eval-out under a file": ["data", "split", "{data}", "--train-out", "{tmp}/t.jsonl",
                                           "--eval-out", "{file}/eval.jsonl"],
    "data preview --html": ["data", "preview", "{data}", "--base-model", "{model}", "--html", "{ro}/preview.html"],
    "data augment --output": ["data", "augment", "{data}", "--output", "{ro}/augmented.jsonl"],
    "train --output-dir": ["train", "--base-model", "{model}", "--data", "{data}", "--output-dir", "{ro}/run"],
    "train --output-dir is a file": ["train", "--base-model", "{model}", "--data", "{data}", "--output-dir", "{file}"],
    "eval --output": ["eval", "{model}", "--data", "{data}", "--output", "{ro}/eval"],
    "eval --output is a file": ["eval", "{model}", "--data", "{data}", "--output", "{file}"],
    "compare --output": ["compare", "--data", "{data}", "--base-model", "{model}", "--output", "{ro}/compare"],
    "compare --output is a file": ["compare", "--data", "{data}", "--base-model", "{model}", "--output", "{file}"],
    "al score --output": ["al", "score", "--model", "{model}", "--pool", "{data}", "--output", "{ro}/scores"],
    "al score --output is a file": ["al", "score", "--model", "{model}", "--pool", "{data}", "--output", "{file}"],
    "al score-merge --output": ["al", "score-merge", "{dir}", "--output", "{ro}/scores"],
    "al select --output": ["al", "select", "--scores", "{dir}", "--budget", "2", "--output", "{ro}/batch"],
    "al merge --into": ["al", "merge", "{data}", "--into", "{ro}/train.jsonl"],
    "al merge --into is a dir": ["al", "merge", "{data}", "--into", "{dir}"],
    "al loop --output-dir": ["al", "loop", "--config", "{loop}", "--output-dir", "{ro}/loop"],
    "plan --json": ["plan", "--base-model", "{model}", "--data", "{data}", "--json", "{ro}/plan.json"],
    "plan --json is a dir": ["plan", "--base-model", "{model}", "--data", "{data}", "--json", "{dir}"],
    "service --workdir": ["service", "--workdir", "{ro}/wd"],
    "service --workdir is a file": ["service", "--workdir", "{file}"],
    "studio --workdir under a file": ["studio", "--workdir", "{file}/wd"],
}


def _argv(template: list[str], files: dict, ro: Path) -> tuple[list[str], str]:
    """The command line, and the bad path in it: the read-only one, else the last argument."""
    argv = [a.format(ro=ro, **files) for a in template]
    bad = next((a for t, a in zip(template, argv) if "{ro}" in t), argv[-1])
    return argv, bad


@pytest.mark.parametrize("case", list(CASES))
def test_bad_output_path_fails_at_once_with_one_line(case, files, read_only, no_model_loads, capsys):
    from strop.cli import main

    template = CASES[case]
    argv, bad = _argv(template, files, read_only)
    before = sorted(p.name for p in Path(files["tmp"]).iterdir())
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (case, err)
    assert len(lines) == 1 and lines[0].startswith("strop: "), (case, err)
    assert bad in lines[0], (case, lines[0])
    assert "Traceback" not in err
    assert sorted(p.name for p in Path(files["tmp"]).iterdir()) == before  # nothing written before the check
    assert not RO.exists()


@pytest.mark.parametrize("case", ["train --output-dir", "data clean --output"])
@pytest.mark.slow
def test_bad_output_path_real_cli_no_traceback(case, files, read_only):
    """The same through the installed command, in its own process."""
    template = CASES[case]
    argv, _ = _argv(template, files, read_only)
    proc = subprocess.run(strop_cmd(*argv), capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("strop: ") and str(read_only) in lines[0], proc.stderr
    assert not (Path(files["tmp"]) / "run").exists()
