"""What a reinforcement job may carry is the operator's choice: python graders and model graders are refused
unless the service was started to run them (in-process app, no worker: nothing trains)."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from strop.service.app import create_service_app
from strop.service.policy import ClientPolicy

PYTHON = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0\n"}
SCORE = {"type": "score_model", "name": "s", "model": "judge", "input": [{"role": "user", "content": "{{sample.output_text}}"}]}


@pytest.fixture
def api(tmp_path, tiny_model_dir):
    policy = ClientPolicy.from_options(model_root=str(tiny_model_dir.parent))
    client = TestClient(create_service_app(tmp_path / "svc", start_worker=False, policy=policy))
    rows = "".join(json.dumps({"messages": [{"role": "user", "content": f"Say {i}."}], "answer": str(i)}) + "\n"
                   for i in range(4))
    upload = client.post("/v1/files", files={"file": ("p.jsonl", rows)}, data={"purpose": "fine-tune"}).json()
    return client, upload["id"], str(tiny_model_dir)


def test_python_and_model_graders_are_refused_unless_enabled(api):
    client, file_id, model = api
    for grader, needs in ((PYTHON, "--allow-python-graders"), (SCORE, "--grader-endpoint")):
        body = {"model": model, "training_file": file_id,
                "method": {"type": "reinforcement", "reinforcement": {"grader": grader}}}
        answer = client.post("/v1/fine_tuning/jobs", json=body)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["param"].startswith("method.reinforcement.grader") and needs in error["message"], error
        assert client.post("/v1/fine_tuning/alpha/graders/validate", json={"grader": grader}).status_code == 400
    missing = client.post("/v1/fine_tuning/jobs", json={"model": model, "training_file": file_id,
                                                         "method": {"type": "reinforcement"}})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "method.reinforcement"
