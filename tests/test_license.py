"""License verdicts: every known license, text detection, unknown and missing ones, sources, the train gate."""
from __future__ import annotations

import json

import pytest

from strop.core.errors import StropError
from strop.plan.license import check, format_check
from strop.plan.license_terms import CONDITIONS, LICENSES, NOT_ALLOWED, UNKNOWN, from_text, lookup


def _model_dir(tmp_path, readme: str | None = None, license_text: str | None = None):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if readme is not None:
        (d / "README.md").write_text(readme)
    if license_text is not None:
        (d / "LICENSE").write_text(license_text)
    return d


@pytest.mark.parametrize("key", sorted(LICENSES))
@pytest.mark.parametrize("use", ["commercial", "research"])
def test_each_known_license_from_model_card(tmp_path, key, use):
    d = _model_dir(tmp_path, readme=f"---\nlicense: {key}\ntags: [x]\n---\n# card\n")
    r = check(str(d), use=use)
    lic = LICENSES[key]
    assert r["verdict"] == getattr(lic, use)
    (fact,) = r["facts"]
    assert fact["license"] == key and "README.md front matter" in fact["source"] and fact["text"] == lic.source
    assert (r["conditions"] == list(lic.conditions)) == (r["verdict"] == CONDITIONS) or not lic.conditions
    assert "not legal advice" in format_check(r)


@pytest.mark.parametrize("key", [k for k, v in LICENSES.items() if v.text_marks])
def test_each_license_text_is_recognised(tmp_path, key):
    text = "\n".join(LICENSES[key].text_marks) + "\nfull text follows...\n"
    assert from_text(text).key == key
    r = check(str(_model_dir(tmp_path, license_text=text)))
    assert r["facts"][0]["license"] == key and r["facts"][0]["source"].endswith("LICENSE")


def test_aliases_and_case():
    assert lookup("Apache-2.0").key == "apache-2.0"
    assert lookup("CC-BY-NC").key == "cc-by-nc-4.0"
    assert lookup("creativeml-openrail-m").key == "openrail-m"
    assert lookup("my-own-license") is None


def test_unknown_and_missing_licenses_say_ask_a_lawyer(tmp_path):
    r = check(str(_model_dir(tmp_path, readme="---\nlicense: other\nlicense_name: acme-terms\n---\n")))
    assert r["verdict"] == UNKNOWN and r["facts"][0]["license"] == "acme-terms"
    assert "ask a lawyer" in format_check(r)
    r = check(str(_model_dir(tmp_path / "b" if (tmp_path / "b").mkdir() is None else tmp_path)))
    assert r["verdict"] == UNKNOWN and r["facts"][0]["license"] == "missing"
    text = check(str(_model_dir(tmp_path / "c" if (tmp_path / "c").mkdir() is None else tmp_path, license_text="Some bespoke terms.")))
    assert text["verdict"] == UNKNOWN and text["facts"][0]["license"] == "unrecognised text"


@pytest.mark.slow
def test_default_model_reads_gguf_metadata():
    r = check("smollm2-135m-instruct", use="commercial")
    sources = [f["source"] for f in r["facts"]]
    assert any(s.endswith("general.license") and ".gguf" in s for s in sources)
    assert {f["license"] for f in r["facts"]} == {"apache-2.0"} and r["verdict"] == CONDITIONS


@pytest.mark.slow
def test_data_license_field_and_strictest_fact_wins(tmp_path):
    data = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "license": "cc-by-nc-4.0"}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    r = check("smollm2-135m-instruct", data=[str(data)], use="commercial")
    assert r["verdict"] == NOT_ALLOWED
    assert any(f["source"] == f"{data}:1 'license' field" and f["verdict"] == NOT_ALLOWED for f in r["facts"])
    assert check("smollm2-135m-instruct", data=[str(data)], use="research")["verdict"] == CONDITIONS


def test_run_directory_inherits_base_license(tmp_path):
    base = _model_dir(tmp_path, readme="---\nlicense: llama3.1\n---\n")
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text(f"base_model: {base}\n")
    (run / "final" / "strop_base.json").write_text(json.dumps({"base_model": str(base)}))
    r = check(str(run))
    assert r["facts"][0]["license"] == "llama3.1" and "base model of run" in r["facts"][0]["source"]
    assert any("Llama" in c for c in r["conditions"])


@pytest.mark.slow
def test_train_gate_stops_on_conflict_unless_accepted(tmp_path):
    from strop.core.config import TrainConfig
    from strop.plan.hooks import check_licenses

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                                "license": "cc-by-nc-sa-4.0"}) + "\n")
    cfg = TrainConfig(data=str(data), intended_use="commercial").validate()
    with pytest.raises(StropError, match="accept-license-risk"):
        check_licenses(cfg)
    cfg.accept_license_risk = True
    assert check_licenses(cfg)["verdict"] == NOT_ALLOWED
    research = TrainConfig(data=str(data), intended_use="research").validate()
    assert check_licenses(research)["verdict"] == CONDITIONS


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(StropError):
        check(str(tmp_path / "nope"))
    with pytest.raises(StropError):
        check("smollm2-135m-instruct", use="personal")
