"""Issue 19.1: an API client cannot make the service run code or reach host paths.

Every job here is created through the HTTP API of an in-process service with no
worker, so nothing trains: what is tested is what the API accepts."""
from __future__ import annotations

import json
import re
import shutil

import pytest
from fastapi.testclient import TestClient

from support import KEY, make_service, rows

from strop.core.config import field_names
from strop.service.policy import API_OWNED, CLIENT_SAFE, OPERATOR_ONLY, ClientPolicy

AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def root(tmp_path, tiny_model_dir):
    """An operator's model root holding one model, and a host directory outside it."""
    r = tmp_path / "models"
    shutil.copytree(tiny_model_dir, r / "tiny")
    (tmp_path / "outside").mkdir()
    shutil.copytree(tiny_model_dir, tmp_path / "outside" / "tiny")
    return r


def service(tmp_path, root, allow=()):
    app = make_service(tmp_path / "wd", api_key=KEY, policy=ClientPolicy.from_options(list(allow), str(root)))
    client = TestClient(app)
    up = client.post("/v1/files", headers=AUTH, files={"file": ("t.jsonl", rows())}, data={"purpose": "fine-tune"})
    assert up.status_code == 200, up.text
    return client, up.json()["id"]


def create(client, file_id, **body):
    return client.post("/v1/fine_tuning/jobs", headers=AUTH, json={"training_file": file_id, **body})


def test_every_training_option_is_classified_once():
    groups = [set(API_OWNED), set(OPERATOR_ONLY), set(CLIENT_SAFE)]
    names = set(field_names())
    assert set().union(*groups) == names, f"unclassified: {names - set().union(*groups)}"
    assert sum(len(g) for g in groups) == len(names)  # no option in two groups


@pytest.mark.parametrize("key,value", [("trust_remote_code", True), ("model_revision", "a" * 64),
                                       ("allow_pickle", True), ("reward_funcs", ["this:x"]),
                                       ("reward_model", "/etc"), ("report_to", "wandb")])
def test_code_and_path_options_are_refused_naming_the_field(tmp_path, root, key, value):
    client, fid = service(tmp_path, root)
    r = create(client, fid, model="tiny", strop={key: value})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == f"strop.{key}" and err["code"] == "option_not_allowed"
    assert f"--allow-client-option {key}" in err["message"]
    assert client.get("/v1/fine_tuning/jobs", headers=AUTH).json()["data"] == []


@pytest.mark.parametrize("key", ["output_dir", "data", "base_model", "output-dir"])
def test_paths_owned_by_the_api_cannot_be_set_through_the_extension(tmp_path, root, key):
    client, fid = service(tmp_path, root)
    r = create(client, fid, model="tiny", strop={key: "/tmp/elsewhere"})
    assert r.status_code == 400 and r.json()["error"]["param"] == f"strop.{key}"


def test_operator_can_allow_an_option_and_health_says_so(tmp_path, root):
    client, fid = service(tmp_path, root, allow=["reward_funcs"])
    health = client.get("/health").json()
    assert health["client_options"] == ["reward_funcs"] and health["model_root"] == str(root.resolve())
    assert client.get("/studio/api/options", headers=AUTH).json()["client_options"] == ["reward_funcs"]
    r = create(client, fid, model="tiny", strop={"reward_funcs": ["strop.train.rewards:length_window"],
                                                 "objective": "grpo"})
    assert (r.json().get("error") or {}).get("param") != "strop.reward_funcs", r.text
    safe = create(client, fid, model="tiny", strop={"lora_r": 4, "max_steps": 2, "report_to": "tensorboard"})
    assert safe.status_code == 200, safe.text
    assert safe.json()["status"] == "validating_files"


def test_unknown_operator_option_is_one_line():
    from strop.core.errors import StropError

    with pytest.raises(StropError, match="did you mean trust_remote_code"):
        ClientPolicy.from_options(["trust_remote_cod"])
    with pytest.raises(StropError, match="clients may already set it"):
        ClientPolicy.from_options(["lora_r"])


def test_model_errors_never_reveal_host_paths(tmp_path, root):
    client, fid = service(tmp_path, root)
    outside = str(tmp_path / "outside" / "tiny")
    (root / "escape").symlink_to(tmp_path / "outside" / "tiny", target_is_directory=True)
    answers = []
    for name in ["/etc", "/nonexistent", outside, "../outside/tiny", "escape", "/proc/self/cwd", "tiny/../../outside/tiny",
                 "gpt-4o-mini", "HuggingFaceTB/SmolLM2-135M"]:
        r = create(client, fid, model=name)
        assert r.status_code == 400, (name, r.text)
        err = r.json()["error"]
        answers.append((err["param"], err["code"], err["message"].replace(repr(name), "NAME")))
    assert len(set(answers)) == 1, answers  # the same answer whatever the name points at
    assert create(client, fid, model="tiny").status_code == 200
    assert create(client, fid, model=str(root / "tiny")).status_code == 200


def test_without_a_model_root_only_aliases_are_offered(tmp_path, tiny_model_dir):
    app = make_service(tmp_path / "wd", api_key=KEY)
    client = TestClient(app)
    fid = client.post("/v1/files", headers=AUTH, files={"file": ("t.jsonl", rows())},
                      data={"purpose": "fine-tune"}).json()["id"]
    r = create(client, fid, model=str(tiny_model_dir))
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_found"


def test_a_model_that_ships_code_is_refused_without_its_hash(tmp_path, root):
    code = root / "coded"
    shutil.copytree(root / "tiny", code)
    cfg = json.loads((code / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (code / "config.json").write_text(json.dumps(cfg))
    (code / "modeling_evil.py").write_text("import os\nos.system('touch /tmp/strop-pwned')\n")
    client, fid = service(tmp_path, root)
    r = create(client, fid, model="coded")
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "model" and "ships its own Python code" in err["message"]
    assert not re.search(r"[0-9a-f]{64}", r.text)
    r = create(client, fid, model="coded", strop={"trust_remote_code": True, "model_revision": "0" * 64})
    assert r.status_code == 400 and not re.search(r"[0-9a-f]{64}", r.text.replace("0" * 64, ""))


def test_job_errors_and_events_shown_to_clients_carry_no_code_hash():
    from strop.service.jobs import event_object, job_object

    digest = "ab" * 32
    job = {"id": "ftjob-" + "0" * 24, "created_at": 1, "error": {"message": f"hashes to {digest}, not x", "code": "x",
                                                                 "param": None},
           "fine_tuned_model": None, "finished_at": None, "hyperparameters": {"n_epochs": 1}, "model": "m",
           "seed": 1, "status": "failed", "trained_tokens": 0, "training_file": "f", "validation_file": None,
           "suffix": "", "method": {"type": "supervised"}}
    assert digest not in json.dumps(job_object(job))
    event = {"id": "e", "created_at": 1, "level": "error", "message": f"code hashes to {digest}", "type": "message",
             "data": None}
    assert digest not in json.dumps(event_object(event))


def test_a_base_model_named_relative_to_the_root_is_served_from_there(tmp_path, root):
    client, fid = service(tmp_path, root)
    assert create(client, fid, model="tiny").status_code == 200
    models = client.app.state.service.models
    assert models.path_for("tiny") == str((root / "tiny").resolve())  # not the bare name, which means nothing here
    assert [m["id"] for m in client.get("/v1/models", headers=AUTH).json()["data"]] == ["tiny"]
