"""Shared fixtures: a tiny Llama (2 layers, hidden 64) with the real SmolLM2 tokenizer."""
from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on two cores. Each one, and every strop process a test
    # starts, keeps to one CPU thread: two OpenMP pools of two threads on two cores wait on each
    # other's descheduled threads (docs/performance.md), one thread each does not.
    os.environ.setdefault("STROP_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

FIXTURES = Path(__file__).parent / "fixtures"
# Seconds each test file took in a whole `make test` run (`make test-durations` rewrites it). `make test`
# hands whole files to its two workers in collection order, so the longest files go first: left to
# pytest-xdist's own order (most tests first) the 140-second real-model file started near the end and
# one worker idled for a minute and more while the other finished it.
DURATIONS = Path(__file__).parent / "durations.json"
PEER = FIXTURES / "peer"  # LLaMA-Factory's data files, Apache-2.0 (fixtures/peer/README.md)
DEMO_DATA = ROOT / "src" / "strop" / "demo_data"


@pytest.fixture(scope="session")
def smol_tokenizer():
    from strop import models

    return models.load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A randomly initialised 2-layer Llama saved as a normal HF directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = smol_tokenizer
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, initializer_range=0.1, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def chat_file(tmp_path) -> Path:
    """A small OpenAI-format training file."""
    import json

    rows = []
    for i in range(12):
        rows.append({"messages": [
            {"role": "user", "content": f"What is {i} plus {i}?"},
            {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
        ]})
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@contextlib.contextmanager
def fake_chat_endpoint(reply, seen: list | None = None, usage: dict | None = None, model_suffix: str = ""):
    """A local OpenAI-compatible ``/v1/chat/completions``; ``reply(body)`` writes each answer (its text, or a
    whole message dict); ``usage`` is sent with every answer, and the answer names the asked model plus
    ``model_suffix`` (as a hosted model's dated name does).

    Yields the base URL; every request lands in ``seen`` as {"path", "auth", "body"}.
    """
    seen = [] if seen is None else seen
    seen.clear()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            answer = reply(body)
            message = answer if isinstance(answer, dict) else {"role": "assistant", "content": answer}
            data = json.dumps({"id": "fake", "object": "chat.completion", "created": 0,
                               "model": body.get("model", "") + model_suffix,
                               "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                               **({"usage": usage} if usage else {})}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def write_jsonl(path, rows):
    """Write ``rows`` as JSON lines to ``path``; returns the path."""
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise TimeoutError(url)


def strop_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "strop", *args]


def pytest_addoption(parser):
    parser.addoption("--record-durations", action="store_true",
                     help="put each test file's seconds into tests/durations.json at the end (make test-durations)")


def pytest_collection_modifyitems(config, items):
    """Longest files first (tests/durations.json), each file's tests in their own order; files the
    table does not know yet go last."""
    try:
        seconds = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::")[0], 0.0))


_file_seconds: collections.Counter = collections.Counter()


def pytest_runtest_logreport(report):
    _file_seconds[report.nodeid.split("::")[0]] += report.duration


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if not config.getoption("--record-durations") or hasattr(config, "workerinput") or exitstatus != 0:
        return  # the controller writes once, and only after a whole run that passed
    try:  # the files this run did not reach keep their entries
        table = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        table = {}
    table.update({name: round(t, 1) for name, t in _file_seconds.items()})
    table = dict(sorted(table.items(), key=lambda kv: -kv[1]))
    DURATIONS.write_text(json.dumps(table, indent=1) + "\n")
