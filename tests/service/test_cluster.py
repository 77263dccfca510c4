"""Jobs handed to a cluster scheduler: `strop service --launcher slurm` against a fake Slurm.

tests/service/fake_slurm/ holds sbatch, squeue and scancel stand-ins that run
each batch script on this machine under a supervisor process, as slurmstepd
would; the training itself is the real runner on the tiny model. Job state
stays in the service's store; the scheduler only runs the process.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import openai
import pytest

from conftest import free_port, strop_cmd, wait_for

KEY = "sk-test-cluster"
FAKE = Path(__file__).with_name("fake_slurm")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_model_dir):
    workdir, state = tmp_path_factory.mktemp("cluster-svc"), tmp_path_factory.mktemp("slurm-state")
    env = {**os.environ, "PATH": f"{FAKE}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state)}
    port = free_port()
    log = (workdir / "service.log").open("w")
    proc = subprocess.Popen(strop_cmd("service", "--port", str(port), "--workdir", str(workdir), "--api-key", KEY,
                                      "--model-root", str(tiny_model_dir.parent), "--launcher", "slurm",
                                      "--slurm-option=--partition=debug", "--slurm-option=--gres=gpu:1",
                                      "--scheduler-poll-s", "1"),
                            # a file, not a pipe: nobody reads a pipe while tests run, and a full one blocks the service
                            stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", proc)
        yield openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120), workdir, state
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


@pytest.fixture(scope="module")
def train_file(cluster, tmp_path_factory):
    rows = "".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                            {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}) + "\n"
                   for i in range(12))
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text(rows)
    return cluster[0].files.create(file=path.open("rb"), purpose="fine-tune")


def wait_status(client, job_id, wanted, timeout=240.0):
    deadline = time.monotonic() + timeout
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in wanted:
        assert time.monotonic() < deadline, job.status
        time.sleep(0.2)
    return job


def messages(client, job_id):
    return [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=1000).data]


def test_jobs_run_as_batch_jobs_and_pause_and_resume_through_the_scheduler(cluster, train_file, tiny_model_dir):
    client, workdir, state = cluster
    job = client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=train_file.id, seed=1,
                                         extra_body={"strop": {"max_steps": 40, "logging_steps": 1}})
    deadline = time.monotonic() + 120
    while not any(m.startswith("Step ") for m in messages(client, job.id)):
        assert time.monotonic() < deadline, messages(client, job.id)
        time.sleep(0.05)
    client.fine_tuning.jobs.pause(job.id)
    deadline = time.monotonic() + 120
    while not any(m.startswith("Fine-tuning job paused") for m in messages(client, job.id)):
        assert time.monotonic() < deadline, messages(client, job.id)
        time.sleep(0.1)
    client.fine_tuning.jobs.resume(job.id)
    done = wait_status(client, job.id, ("succeeded", "failed"))
    assert done.status == "succeeded", (done.error, messages(client, job.id))
    # two batch jobs (before and after the pause), each with the operator's options; the pause was a
    # TERM through scancel, which made the runner seal a checkpoint
    scripts = sorted(state.glob("*.submitted"))
    assert len(scripts) == 2
    for script in scripts:
        text = script.read_text()
        assert "#SBATCH --partition=debug" in text and "#SBATCH --gres=gpu:1" in text
        assert f"strop.service.runner {workdir / 'runs' / job.id}" in text
    assert "--resume" in scripts[1].read_text()
    assert (state / f"{scripts[0].stem}.scancel").read_text().split() == ["--signal=TERM", "--full", scripts[0].stem]
    assert any(m.startswith("Fine-tuning job resumed from step ") for m in messages(client, job.id))
    reply = client.chat.completions.create(model=done.fine_tuned_model, max_tokens=3,
                                           messages=[{"role": "user", "content": "What is 2 plus 2?"}])
    assert reply.usage.completion_tokens >= 1



def test_a_failing_batch_job_fails_the_job_with_its_reason(cluster, tiny_model_dir, tmp_path):
    client, _, _ = cluster
    bad = tmp_path / "short.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                            {"role": "assistant", "content": "Hello there."}]}) + "\n")
    upload = client.files.create(file=bad.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=upload.id,
                                         extra_body={"strop": {"max_length": 4}})  # nothing left to train on
    done = wait_status(client, job.id, ("succeeded", "failed"))
    assert done.status == "failed" and "max_length" in done.error.message, done.error
