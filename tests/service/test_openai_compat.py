"""The fine-tuning API as a client written for OpenAI uses it: the official openai SDK against `strop service`.

One service process (tiny model, one training thread, so a paused and resumed
job can be compared bit for bit with an uninterrupted one, webhooks to a
receiver that verifies every event with the SDK) serves the module. Each
test names the OpenAI behaviour it checks.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import os
import subprocess
import time
from pathlib import Path

import openai
import pytest
import torch
from safetensors.torch import load_file

from conftest import free_port, strop_cmd, wait_for
from test_webhooks import Receiver, serving

from strop.graders import sandbox
from strop.service.webhooks import new_secret

KEY = "sk-test-compat"
OPENAI_MODEL = "gpt-4o-mini-2024-07-18"  # a hosted model name, mapped by the operator to the tiny model
SECRET = new_secret()
pytestmark = pytest.mark.slow  # every test here trains through the service
SANDBOX = sandbox.available()  # python graders need it (user namespaces); without, they are tested as refused


def rows(n: int = 12, offset: int = 0) -> str:
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                            {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}) + "\n"
                   for i in range(offset, offset + n))


def pairs(n: int = 8) -> str:
    return "".join(json.dumps({"input": {"messages": [{"role": "user", "content": f"Say {i} politely."}]},
                               "preferred_output": [{"role": "assistant", "content": f"Certainly: {i}."}],
                               "non_preferred_output": [{"role": "assistant", "content": f"{i}!!"}]}) + "\n"
                   for i in range(n))


@pytest.fixture(scope="module")
def receiver():
    got = Receiver(secret=SECRET)
    with serving(got) as url:
        yield got, url


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_model_dir, receiver):
    workdir = tmp_path_factory.mktemp("compat")
    port = free_port()
    env = {**os.environ, "STROP_THREADS": "1", "STROP_WEBHOOK_SECRET": SECRET}
    log = (workdir / "service.log").open("w")
    proc = subprocess.Popen(strop_cmd("service", "--port", str(port), "--workdir", str(workdir), "--api-key", KEY,
                                      "--concurrency", "2",  # one training thread each: two jobs share the 2 cores
                                      "--model-root", str(tiny_model_dir.parent), "--webhook", receiver[1],
                                      "--model-map", f"{OPENAI_MODEL}={tiny_model_dir}",
                                      "--model-map", f"o4-mini-2025-04-16={tiny_model_dir}",
                                      *(["--allow-python-graders"] if SANDBOX[0] else [])),
                            # a file, not a pipe: nobody reads a pipe while tests run, and a full one blocks the service
                            stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", proc)
        yield url, workdir
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


@pytest.fixture(scope="module")
def client(service):
    return openai.OpenAI(base_url=f"{service[0]}/v1", api_key=KEY, max_retries=0, timeout=120)


def prompts(n: int = 8) -> str:
    """OpenAI's reinforcement rows: the conversation so far, and fields the grader reads as {{item.*}}."""
    colours = ["blue", "red", "green", "white"]
    return "".join(json.dumps({"messages": [{"role": "developer", "content": "Answer with one word."},
                                            {"role": "user", "content": f"Name the colour number {i}."}],
                               "reference_answer": colours[i % 4]}) + "\n" for i in range(n))


@pytest.fixture(scope="module")
def files(client, tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    (d / "train.jsonl").write_text(rows())
    (d / "valid.jsonl").write_text(rows(4, offset=20))
    (d / "pairs.jsonl").write_text(pairs())
    (d / "prompts.jsonl").write_text(prompts())
    return {name: client.files.create(file=(d / f"{name}.jsonl").open("rb"), purpose="fine-tune")
            for name in ("train", "valid", "pairs", "prompts")}


def wait_status(client, job_id: str, wanted: tuple[str, ...], timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in wanted:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"{job_id} never reached {wanted}: {job.status}")


def messages(client, job_id: str) -> list[str]:
    return [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=1000).data]


@pytest.fixture(scope="module")
def supervised(client, files, tiny_model_dir):
    """A supervised job with a validation file and metadata, as OpenAI's guide creates one."""
    job = client.fine_tuning.jobs.create(model=OPENAI_MODEL, training_file=files["train"].id,
                                         validation_file=files["valid"].id, suffix="compat", seed=3,
                                         metadata={"team": "search", "ticket": "T-1"},
                                         hyperparameters={"n_epochs": 2})
    return job, wait_status(client, job.id, ("succeeded", "failed", "cancelled"))


def test_job_object_matches_openai_before_and_after_training(client, supervised, tiny_model_dir):
    created, done = supervised
    # left to the service: "auto" until training starts, as OpenAI shows it; given: the value
    assert created.hyperparameters.batch_size == "auto" and created.hyperparameters.learning_rate_multiplier == "auto"
    assert created.hyperparameters.n_epochs == 2 and created.method.supervised.hyperparameters.batch_size == "auto"
    assert created.metadata == {"team": "search", "ticket": "T-1"} and created.estimated_finish is None
    assert done.status == "succeeded", done.error
    assert isinstance(done.hyperparameters.batch_size, int) and done.hyperparameters.learning_rate_multiplier == 1.0
    assert done.metadata == created.metadata and done.organization_id == "strop"
    # OpenAI's five parts: ft:<base>:<organization>:<suffix>:<id>
    assert done.model == OPENAI_MODEL and done.fine_tuned_model == f"ft:{OPENAI_MODEL}:strop:compat:{done.id[6:18]}"
    reply = client.chat.completions.create(model=OPENAI_MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
    assert reply.model == OPENAI_MODEL
    assert done.trained_tokens > 0 and done.estimated_finish is None


def test_metrics_events_carry_openai_fields(client, supervised):
    _, done = supervised
    events = client.fine_tuning.jobs.list_events(done.id, limit=1000).data
    train = [e for e in events if e.type == "metrics" and "train_loss" in e.data]
    valid = [e for e in events if e.type == "metrics" and "valid_loss" in e.data]
    total = train[0].data["total_steps"]
    assert total == 6 and [e.data["step"] for e in reversed(train)] == list(range(1, total + 1))
    assert all(e.message.startswith(f"Step {e.data['step']}/{total}: training loss=") for e in train)
    assert all(0.0 <= e.data["train_mean_token_accuracy"] <= 1.0 for e in train)
    assert valid and all("valid_mean_token_accuracy" in e.data for e in valid)


def test_results_file_is_openai_step_metrics(client, supervised):
    _, done = supervised
    assert len(done.result_files) == 1
    meta = client.files.retrieve(done.result_files[0])
    assert meta.filename == "step_metrics.csv" and meta.purpose == "fine-tune-results"
    # OpenAI serves it base64-encoded; clients decode it
    table = list(csv.DictReader(io.StringIO(base64.b64decode(client.files.content(meta.id).read()).decode())))
    assert list(table[0]) == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    events = client.fine_tuning.jobs.list_events(done.id, limit=1000).data
    logged = {e.data["step"]: e.data["train_loss"] for e in events if e.type == "metrics" and "train_loss" in e.data}
    assert {int(r["step"]): float(r["train_loss"]) for r in table if r["train_loss"]} == pytest.approx(logged, rel=1e-5)
    assert any(r["valid_loss"] for r in table)


def test_metadata_filter_and_job_listing(client, supervised, files, tiny_model_dir):
    created, _ = supervised
    plain = client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=files["train"].id,
                                           extra_body={"strop": {"max_steps": 1}})
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "search"}).data] == [created.id]
    assert client.fine_tuning.jobs.list(metadata={"team": "other"}).data == []
    assert created.id not in [j.id for j in client.fine_tuning.jobs.list(extra_query={"metadata": "null"}).data]
    assert plain.id in [j.id for j in client.fine_tuning.jobs.list(extra_query={"metadata": "null"}).data]
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=files["train"].id,
                                       metadata={f"k{i}": "v" for i in range(17)})
    assert err.value.body["param"] == "metadata"


def test_files_list_pages_like_openai(client, files):
    everything = client.files.list().data
    ids = [f.id for f in everything]
    assert set(ids) >= {f.id for f in files.values()}
    first = client.files.list(limit=1)
    assert [f.id for f in first.data] == ids[:1] and first.has_more and first.last_id == ids[0]
    assert [f.id for f in client.files.list(limit=2, after=ids[0]).data] == ids[1:3]
    assert [f.id for f in client.files.list(order="asc").data] == ids[::-1]
    assert [f.id for f in client.files.list(purpose="fine-tune", order="asc").data][:3] == [
        files["train"].id, files["valid"].id, files["pairs"].id]
    # the SDK's auto-pagination walks every page
    assert [f.id for f in client.files.list(limit=1)] == ids


def test_errors_name_the_request_field(client, files, tiny_model_dir):
    cases = [({"hyperparameters": {"learning_rate_multiplier": -1}}, "hyperparameters.learning_rate_multiplier"),
             ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
             ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}}, "method.dpo.hyperparameters.beta"),
             ({"extra_body": {"strop": {"lora_r": 0}}}, "strop.lora_r"),
             ({"extra_body": {"strop": {"lora_rank": 8}}}, "strop.lora_rank")]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=files["train"].id, **kwargs)
        assert err.value.body["param"] == param, (kwargs, err.value.body)
        assert "option " not in err.value.body["message"], err.value.body


def test_dpo_job_echoes_beta_and_counts_tokens(client, files, tiny_model_dir):
    job = client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=files["pairs"].id,
                                         method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}},
                                         extra_body={"strop": {"max_steps": 2}})
    assert job.method.dpo.hyperparameters.beta == 0.2 and job.method.dpo.hyperparameters.n_epochs == "auto"
    done = wait_status(client, job.id, ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    assert done.method.dpo.hyperparameters.beta == 0.2 and done.trained_tokens > 0


def test_pause_and_resume_continue_exactly(client, files, tiny_model_dir, service):
    """Paused mid-run, resumed from the checkpoint the pause sealed: the same weights as a run left alone."""
    opts = {"max_steps": 60, "save_steps": 1000, "lora_dropout": 0.0, "logging_steps": 1}
    args = dict(model=str(tiny_model_dir), training_file=files["train"].id, seed=5, extra_body={"strop": opts})
    paused = client.fine_tuning.jobs.create(suffix="paused", **args)
    alone = client.fine_tuning.jobs.create(suffix="alone", **args)  # alongside (--concurrency 2), never paused
    deadline = time.monotonic() + 120
    while not any(m.startswith("Step ") for m in messages(client, paused.id)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    running = client.fine_tuning.jobs.retrieve(paused.id)  # measured step rate -> a finish time
    assert running.status == "running" and running.estimated_finish >= int(time.time()) - 1
    assert client.fine_tuning.jobs.pause(paused.id).status == "paused"
    deadline = time.monotonic() + 120
    while not any(m.startswith("Fine-tuning job paused") for m in messages(client, paused.id)):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    at = [m for m in messages(client, paused.id) if m.startswith("Fine-tuning job paused")][0]
    step = int(at.rsplit(" ", 1)[1])
    assert 0 < step < 60, at
    assert client.fine_tuning.jobs.retrieve(paused.id).status == "paused"
    assert client.fine_tuning.jobs.resume(paused.id).status == "queued"
    with pytest.raises(openai.BadRequestError, match="only a paused job can be resumed"):
        client.fine_tuning.jobs.resume(paused.id)
    done = wait_status(client, paused.id, ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    assert f"Fine-tuning job resumed from step {step}" in messages(client, paused.id)
    alone = wait_status(client, alone.id, ("succeeded", "failed"))
    with pytest.raises(openai.BadRequestError, match="only a running job can be paused"):
        client.fine_tuning.jobs.pause(alone.id)
    runs = Path(service[1]) / "runs"
    a = load_file(runs / paused.id / "final" / "adapter_model.safetensors")
    b = load_file(runs / alone.id / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_models_chat_and_fine_tuned_models_train_on(client, supervised, files, service):
    _, done = supervised
    ckpts = client.fine_tuning.jobs.checkpoints.list(done.id).data
    name = ckpts[-1].fine_tuned_model_checkpoint
    reply = client.chat.completions.create(model=name, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    assert reply.model == name and reply.usage.completion_tokens >= 1
    stream = client.chat.completions.create(model=name, max_tokens=4, stream=True,
                                            messages=[{"role": "user", "content": "Hi"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == reply.choices[0].message.content
    answer = client.responses.create(model=name, input="Hi", max_output_tokens=4)  # the Responses API, the same
    assert answer.model == name and answer.output_text == reply.choices[0].message.content
    assert {m.id for m in client.models.list().data} >= {OPENAI_MODEL, done.fine_tuned_model}
    assert [c.step_number for c in ckpts] == [6, 3]  # one per epoch, newest first
    assert "train_loss" in ckpts[0].metrics.model_dump(exclude_none=True)
    with pytest.raises(openai.NotFoundError, match="no complete checkpoint at step 999"):
        client.chat.completions.create(model=f"{done.fine_tuned_model}:ckpt-step-999",
                                       messages=[{"role": "user", "content": "Hi"}])
    # train on from the fine-tuned model: a tiny learning rate keeps the new adapter at the old one's weights
    more = client.fine_tuning.jobs.create(model=done.fine_tuned_model, training_file=files["train"].id, suffix="more",
                                          hyperparameters={"learning_rate_multiplier": 1e-6},
                                          extra_body={"strop": {"max_steps": 1}})
    from_ckpt = client.fine_tuning.jobs.create(model=name, training_file=files["train"].id,
                                               extra_body={"strop": {"max_steps": 1}})
    assert more.model == done.fine_tuned_model
    more = wait_status(client, more.id, ("succeeded", "failed"))
    assert more.status == "succeeded", more.error
    assert more.fine_tuned_model.startswith(f"{done.fine_tuned_model.rsplit(':', 3)[0]}:strop:more:")
    runs = Path(service[1]) / "runs"
    parent = load_file(runs / done.id / "final" / "adapter_model.safetensors")
    child = load_file(runs / more.id / "final" / "adapter_model.safetensors")
    lora_b = [k for k in parent if "lora_B" in k]
    assert lora_b and all(parent[k].abs().max() > 0 for k in lora_b)  # a fresh adapter's B would be zero
    assert all(torch.allclose(parent[k], child[k], atol=1e-4) for k in parent)
    # and from one of its checkpoints
    assert wait_status(client, from_ckpt.id, ("succeeded", "failed")).status == "succeeded"
    with pytest.raises(openai.BadRequestError, match="no fine-tuned model of that name"):
        client.fine_tuning.jobs.create(model="ft:nothing:strop:x:000000000000", training_file=files["train"].id)


def test_webhooks_report_each_outcome(client, supervised, files, tiny_model_dir, receiver):
    _, done = supervised
    job = client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=files["train"].id,
                                         hyperparameters={"n_epochs": 50})
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="already succeeded"):
        client.fine_tuning.jobs.cancel(done.id)
    deadline = time.monotonic() + 30
    got = receiver[0]
    while time.monotonic() < deadline and not {("fine_tuning.job.succeeded", done.id),
                                               ("fine_tuning.job.cancelled", job.id)} <= {
                                                   (e.type, e.data.id) for e in got.events}:
        time.sleep(0.1)
    events = messages(client, job.id)
    assert "Cancellation requested" in events and "Fine-tuning job started" not in events
    seen = {(e.type, e.data.id) for e in got.events}
    assert ("fine_tuning.job.succeeded", done.id) in seen and ("fine_tuning.job.cancelled", job.id) in seen
    assert not [r for r in got.requests if "error" in r]  # every delivery verified with the SDK


STRING_CHECK = {"type": "string_check", "name": "colour", "input": "{{sample.output_text}}",
                "reference": "{{item.reference_answer}}", "operation": "ilike"}


def test_grader_endpoints_run_and_validate(client):
    ran = client.fine_tuning.alpha.graders.run(grader=STRING_CHECK, model_sample="It is Blue.",
                                              item={"reference_answer": "blue"})
    assert ran.reward == 1.0 and ran.metadata.type == "string_check"
    assert client.fine_tuning.alpha.graders.run(grader=STRING_CHECK, model_sample="red",
                                                item={"reference_answer": "blue"}).reward == 0.0
    assert client.fine_tuning.alpha.graders.validate(grader=STRING_CHECK).grader.name == "colour"
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.alpha.graders.validate(grader={**STRING_CHECK, "operation": "contains"})
    assert err.value.body["param"] == "grader.operation"


def test_reinforcement_jobs_train_with_string_and_python_graders(client, files, service):
    """RFT as OpenAI runs it, on strop's GRPO: a string_check grader, and a python grader that is sandboxed
    (it scores 1 only if it cannot read the service's job store, so a reward of 1 proves both that it ran
    and that it was blind)."""
    workdir = Path(service[1]).resolve()
    python = {"type": "python", "name": "blind",
              "source": "def grade(sample, item):\n    try:\n"
                        f"        open({str(workdir / 'service.db')!r}, 'rb').read(1)\n"
                        "        return 0.0\n    except OSError:\n        return 1.0\n"}
    opts = {"max_steps": 2, "max_completion_length": 6, "num_generations": 2}
    made = []
    for grader in (STRING_CHECK, python) if SANDBOX[0] else (STRING_CHECK,):
        job = client.fine_tuning.jobs.create(
            model=OPENAI_MODEL, training_file=files["prompts"].id, extra_body={"strop": opts},
            method={"type": "reinforcement", "reinforcement": {"grader": grader,
                                                               "hyperparameters": {"batch_size": 2,
                                                                                   "reasoning_effort": "low"}}})
        assert job.method.reinforcement.grader.name == grader["name"]
        assert job.method.reinforcement.hyperparameters.reasoning_effort == "low"
        made.append(job)
    for job in made:
        done = wait_status(client, job.id, ("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model.startswith(f"ft:{OPENAI_MODEL}:strop:")
    if SANDBOX[0]:
        rewards = [r["reward"] for r in map(json.loads, (workdir / "runs" / made[1].id / "metrics.jsonl").open())
                   if "reward" in r]
        assert rewards and all(r == 1.0 for r in rewards), rewards
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model=OPENAI_MODEL, training_file=files["prompts"].id,
                                       method={"type": "reinforcement",
                                               "reinforcement": {"grader": {**STRING_CHECK, "input": "{{sample.nope}}"}}})
    assert err.value.body["param"].startswith("method.reinforcement.grader")


def test_a_script_written_for_openai_runs_unmodified(service, files, tmp_path):
    """examples/openai_fine_tuning.py names no strop URL or function: the official client reads
    OPENAI_BASE_URL and OPENAI_API_KEY, as it would for OpenAI."""
    import sys

    if not SANDBOX[0]:
        pytest.skip(f"the script's python grader needs the sandbox: {SANDBOX[1]}")
    data = tmp_path / "data"
    data.mkdir()
    for name, text in (("train", rows()), ("valid", rows(4, offset=20)), ("pairs", pairs()), ("prompts", prompts())):
        (data / f"{name}.jsonl").write_text(text)
    script = Path(__file__).resolve().parents[2] / "examples" / "openai_fine_tuning.py"
    env = {**os.environ, "OPENAI_BASE_URL": f"{service[0]}/v1", "OPENAI_API_KEY": KEY}
    done = subprocess.run([sys.executable, str(script), str(data)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "supervised: succeeded ft:gpt-4o-mini-2024-07-18:strop:support:" in out
    assert "dpo: succeeded" in out and "reinforcement: succeeded" in out and "cancelled: cancelled" in out
    assert "results: step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy" in out
