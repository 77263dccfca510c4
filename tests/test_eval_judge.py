"""LLM-as-judge against a small local fake OpenAI-compatible server, and a down endpoint."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from strop.eval.judge import RUBRIC_PROMPT, judge, parse_grade

from conftest import free_port


class FakeJudge(BaseHTTPRequestHandler):
    """Grades 5 when the answer repeats the reference, else 2; 'garbled' answers get prose."""

    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        prompt = body["messages"][0]["content"]
        reference = prompt.split("Reference answer:\n")[1].split("\n\n")[0]
        answer = prompt.split("Assistant's answer:\n")[1].split("\n\n")[0]
        reply = "I refuse to grade" if answer == "garbled" else ("5" if answer == reference else "Grade: 2")
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeJudge.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _rows():
    return [{"system": s, "prompt": "Capital of France?", "reference": "Paris", "prediction": p}
            for s, p in (("base", "Lyon"), ("base", "garbled"), ("tuned", "Paris"), ("tuned", "Paris"))]


def test_parse_grade():
    assert parse_grade("4") == 4
    assert parse_grade("Grade: 3/5") == 3
    assert parse_grade("nothing") is None
    assert parse_grade("10") is None  # not a 1-5 digit on its own


def test_judge_grades_through_an_openai_compatible_endpoint(fake_endpoint):
    rows = _rows()
    out = judge(rows, fake_endpoint, "fake-judge", api_key="k")
    assert [r["judge"] for r in rows] == [2, None, 5, 5]
    assert out["mean"] == {"base": 2.0, "tuned": 5.0}
    assert out["unparsed"] == {"base": 1}
    assert out["prompt"] == RUBRIC_PROMPT
    first = FakeJudge.seen[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer k"
    assert first["body"]["model"] == "fake-judge" and first["body"]["temperature"] == 0


def test_down_endpoint_is_a_marked_skip_not_a_crash():
    rows = _rows()
    out = judge(rows, f"http://127.0.0.1:{free_port()}/v1", "m", timeout=5)
    assert out["skipped"].startswith("judge endpoint http://127.0.0.1:")
    assert "failed" in out["skipped"]
    assert all("judge" not in r for r in rows)  # no half-graded rows left behind
