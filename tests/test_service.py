"""The fine-tuning service against the official openai SDK, on the tiny model.

One real `strop service` process (uvicorn, a worker, training child
processes) serves the module; the restart logic is checked directly on the
store, since killing a service mid-step is slow and racy.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port, strop_cmd, wait_for

KEY = "sk-test-strop"
MAX_UPLOAD = 0.05  # MB: small enough to test the limit with a few rows


def rows(n: int = 12) -> str:
    return "\n".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                              {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]})
                     for i in range(n)) + "\n"


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_model_dir):
    workdir = tmp_path_factory.mktemp("service")
    port = free_port()
    proc = subprocess.Popen(strop_cmd("service", "--port", str(port), "--workdir", str(workdir), "--api-key", KEY,
                                      "--max-upload-mb", str(MAX_UPLOAD), "--model-root", str(tiny_model_dir.parent)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", proc)
        yield url, workdir
    finally:
        proc.terminate()
        proc.wait(60)


@pytest.fixture(scope="module")
def client(service):
    from openai import OpenAI

    return OpenAI(base_url=f"{service[0]}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def train_file(client, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text(rows())
    return client.files.create(file=path.open("rb"), purpose="fine-tune")


def test_bad_input_gets_openai_errors(client, service, train_file, tiny_model_dir, tmp_path):
    import httpx
    import openai

    bad = tmp_path / "bad.jsonl"
    bad.write_text(rows(2) + '{"messages": [{"role": "user", "content": "no answer"}]}\n')
    with pytest.raises(openai.BadRequestError, match=r"bad\.jsonl:3: conversation has no assistant message"):
        client.files.create(file=bad.open("rb"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="purpose 'assistants' is not supported"):
        client.files.create(file=bad.open("rb"), purpose="assistants")
    big = tmp_path / "big.jsonl"
    big.write_text(rows(1000))
    with pytest.raises(openai.APIStatusError, match="larger than the limit") as err:
        client.files.create(file=big.open("rb"), purpose="fine-tune")
    assert err.value.status_code == 413
    assert len(client.files.list(purpose="fine-tune").data) == 1  # neither bad upload was kept
    with pytest.raises(openai.BadRequestError, match="training_file: no file") as err:
        client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file="file-" + "0" * 24)
    assert err.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=train_file.id,
                                       hyperparameters={"n_epochs": "many"})
    assert err.value.body["param"] == "hyperparameters.n_epochs"
    with pytest.raises(openai.BadRequestError, match="not a built-in alias or a model directory this service offers"):
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=train_file.id)
    with pytest.raises(openai.BadRequestError, match="unknown key 'lora_rank'"):
        client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=train_file.id,
                                       extra_body={"strop": {"lora_rank": 8}})
    with pytest.raises(openai.BadRequestError, match="suffix"):
        client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=train_file.id, suffix="../../etc")
    from strop.service.jobs import preference_available

    if not preference_available():
        with pytest.raises(openai.BadRequestError, match="'dpo' is not supported yet") as err:
            client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=train_file.id,
                                           method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}})
        assert err.value.body["param"] == "method.type"
    with pytest.raises(openai.BadRequestError, match="it holds the grader"):
        client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=train_file.id,
                                       method={"type": "reinforcement"})
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-../../service.db")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-..%2f..%2fservice.db")
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="ft:nothing:x:y", messages=[{"role": "user", "content": "hi"}])
    url = service[0]
    assert httpx.get(f"{url}/v1/fine_tuning/jobs").status_code == 401
    assert httpx.get(f"{url}/v1/files", headers={"Authorization": "Bearer wrong"}).json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/studio/index.html", follow_redirects=False).status_code == 303  # to the login page
    assert httpx.get(f"{url}/studio/index.html", cookies={"strop_key": KEY}).status_code == 200
    assert httpx.get(f"{url}/studio/..%2Fapp.py", cookies={"strop_key": KEY}).status_code == 404
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_upload_name_never_becomes_a_path(client, service, tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(rows(2))
    f = client.files.create(file=("../../../escape.jsonl", path.read_bytes()), purpose="fine-tune")
    assert f.filename == "escape.jsonl"
    stored = list((service[1] / "files").iterdir())
    assert f"{f.id}.jsonl" in [p.name for p in stored] and not (service[1].parent / "escape.jsonl").exists()
    assert client.files.content(f.id).content == path.read_bytes()
    assert client.files.delete(f.id).deleted
    assert f.id not in [x.id for x in client.files.list().data]
    assert not (service[1] / "files" / f"{f.id}.jsonl").exists()


# -- restarts: the store and the run directory decide, without a live service ----
def _running_job(store, runs: Path, *, restarts: int = 0, checkpoint: int | None = None) -> str:
    from strop.service.store import new_id
    from strop.core.manifest import write_manifest

    job_id = new_id("ftjob")
    store.add_job({"id": job_id, "created_at": 1, "model": "m", "training_file": "file-x", "seed": 1,
                   "hyperparameters": {"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1},
                   "method": {"type": "supervised"}, "options": {}, "status": "running", "restarts": restarts,
                   "pid": 999999999})
    root = runs / job_id
    (root / "checkpoints").mkdir(parents=True)
    (root / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    if checkpoint:
        (root / "checkpoints" / f"checkpoint-{checkpoint}").mkdir()
        (root / "checkpoints" / f"checkpoint-{checkpoint}" / "trainer_state.json").write_text("{}")
        write_manifest(root / "checkpoints" / f"checkpoint-{checkpoint}")  # what makes a checkpoint complete
    return job_id


def test_restart_resumes_restarts_or_fails_never_loses(tmp_path):
    from strop.service.store import Store
    from strop.service.worker import recover

    store, runs = Store(tmp_path / "s.db"), tmp_path / "runs"
    resumable = _running_job(store, runs, checkpoint=4)
    fresh = _running_job(store, runs)
    hopeless = _running_job(store, runs, restarts=3, checkpoint=2)
    recover(store, runs)
    job = store.get_job(resumable)
    assert (job["status"], job["resume"], job["restarts"]) == ("queued", 1, 1)
    assert (runs / resumable / "checkpoints" / "checkpoint-4").is_dir()
    assert "resuming from step 4" in store.events(resumable)[0]["message"]
    job = store.get_job(fresh)
    assert (job["status"], job["resume"]) == ("queued", 0)
    assert not (runs / fresh / "checkpoints").exists() and not (runs / fresh / "metrics.jsonl").exists()
    job = store.get_job(hopeless)
    assert job["status"] == "failed" and "stopped during this job 4 times" in job["error"]["message"]


def test_a_job_that_ended_while_the_service_was_down_is_finished_like_any_other(tmp_path):
    """Result file, events and webhooks, as for a job the worker saw end."""
    import json as _json
    from types import SimpleNamespace

    from strop.service.store import Store
    from strop.service.worker import Worker, recover

    store, runs = Store(tmp_path / "s.db"), tmp_path / "runs"
    done, hopeless = _running_job(store, runs), _running_job(store, runs, restarts=3)
    root = runs / done
    (root / "final").mkdir()
    (root / "summary.json").write_text(_json.dumps({"tokens_seen": 123}))
    (root / "metrics.jsonl").write_text(_json.dumps({"step": 1, "loss": 2.5, "mean_token_accuracy": 0.5}) + "\n")
    told = []
    worker = Worker(store, tmp_path / "files", runs, hooks=SimpleNamespace(emit=lambda kind, job: told.append((kind, job))))
    recover(store, runs, worker=worker)
    job = store.get_job(done)
    assert job["status"] == "succeeded" and job["trained_tokens"] == 123 and len(job["result_files"]) == 1
    assert store.get_file(job["result_files"][0])["filename"] == "step_metrics.csv"
    assert store.get_job(hopeless)["status"] == "failed"
    assert sorted(told) == sorted([("fine_tuning.job.succeeded", done), ("fine_tuning.job.failed", hopeless)])
