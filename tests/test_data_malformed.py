"""The malformed corpus: strict reports every bad row with file:line and a code; lenient keeps the rest."""
from __future__ import annotations

import json

import pytest

from conftest import FIXTURES
from strop.cli import main
from strop.data import DataError, load

CORPUS = FIXTURES / "malformed"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())


def _problems(err_or_ds) -> dict[str, str]:
    return {p.where.rsplit(":", 1)[1]: p.code for p in err_or_ds.problems}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_strict_reports_every_bad_row(name):
    with pytest.raises(DataError) as err:
        load(CORPUS / name)
    assert _problems(err.value) == EXPECTED[name]["problems"]
    assert all(p.where.startswith(str(CORPUS / name) + ":") for p in err.value.problems)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_lenient_keeps_every_valid_row(name):
    ds = load(CORPUS / name, strict=False)
    assert len(ds) == EXPECTED[name]["valid"]
    counts: dict[str, int] = {}
    for code in EXPECTED[name]["problems"].values():
        counts[code] = counts.get(code, 0) + 1
    assert ds.skipped == counts


def test_cli_strict_lists_all_without_traceback(capsys):
    rc = main(["data", "check", str(CORPUS / "bad_rows.jsonl"), "--strict", "--base-model", "smollm2-135m-instruct"])
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in out + err
    assert err.count("\n") == 1 and err.startswith("strop: ") and "14 unusable rows" in err
    for line, code in EXPECTED["bad_rows.jsonl"]["problems"].items():
        assert f"bad_rows.jsonl:{line}: " in out and f"[{code}]" in out


def test_cli_lenient_accepts_valid_rows(capsys):
    assert main(["data", "check", str(CORPUS / "bad_table.csv"), "--lenient"]) == 0
    assert "2 conversations" in capsys.readouterr().out


def test_huge_line_is_refused_alone(tmp_path):
    good = json.dumps({"prompt": "q", "completion": "a"})
    huge = json.dumps({"prompt": "q", "completion": "x" * (20 * 2**20)})
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join([good, huge, good]) + "\n")
    ds = load(path, strict=False)
    assert len(ds) == 2 and ds.skipped == {"row_too_large": 1}
    assert ds.problems[0].where.endswith("big.jsonl:2")


def test_parquet_nulls_and_schema_mismatch(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"instruction": ["a", "b", None], "output": ["x", None, "z"]}), tmp_path / "nulls.parquet")
    ds = load(tmp_path / "nulls.parquet", strict=False)
    assert len(ds) == 1 and ds.skipped == {"missing_field": 2}
    assert [p.where for p in ds.problems] == [f"{tmp_path / 'nulls.parquet'}[1]", f"{tmp_path / 'nulls.parquet'}[2]"]
    folder = tmp_path / "mixed"
    folder.mkdir()
    pq.write_table(pa.table({"instruction": ["a"], "output": ["x"]}), folder / "a.parquet")
    pq.write_table(pa.table({"instruction": ["b", "c"], "output": [1, 2]}), folder / "b.parquet")
    pq.write_table(pa.table({"prompt": ["d"], "completion": ["y"]}), folder / "c.parquet")
    ds = load(folder, strict=False)
    assert len(ds) == 1 and ds.skipped == {"wrong_type": 2, "format_mismatch": 1}
    (folder / "d.parquet").write_bytes(b"PAR1 not really")
    assert load(folder, strict=False).skipped["unreadable_file"] == 1
