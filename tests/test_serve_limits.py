"""Server limits and safety: adapters by name only, body limit, queue full (429),
client disconnects, SIGTERM drain, /v1/completions, /metrics, and the Python API,
the server and `strop generate` agreeing on greedy output."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import httpx
import openai
import pytest

from conftest import free_port, strop_cmd, wait_for
from test_export import make_lora_run
from test_server import MESSAGES, serving

from strop.core.errors import StropError


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from strop.models.engine import Engine

    return Engine(str(tiny_model_dir))


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    return make_lora_run(tiny_model_dir, tmp_path_factory.mktemp("serve") / "run")


def _app(engine, **kw):
    from strop.serve.server import create_app

    return create_app(engine, model_id="tiny", **kw)


# -- adapters ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["..", "../x", "/etc", "a/b", "a..b", "", ".hidden"])
def test_adapter_names_that_look_like_paths_are_refused(name, lora_run):
    from strop.serve.adapters import parse

    with pytest.raises(StropError, match="adapter"):
        parse([f"{name}={lora_run}"])


def test_adapter_through_symlink_is_refused(lora_run, tmp_path):
    from strop.serve.adapters import parse

    link = tmp_path / "link"
    link.symlink_to(lora_run, target_is_directory=True)
    with pytest.raises(StropError, match="symlink"):
        parse([f"ok={link}"])
    assert parse([f"ok={lora_run}"])["ok"] == (lora_run / "final").resolve()


def test_several_adapters_over_one_base(tiny_model_dir, lora_run):
    from strop.serve.adapters import parse
    from strop.models.engine import Engine

    want_base = Engine(str(tiny_model_dir)).chat(MESSAGES, max_new_tokens=8).text
    want_lora = Engine(str(lora_run)).chat(MESSAGES, max_new_tokens=8).text
    assert want_base != want_lora
    app = _app(Engine(str(tiny_model_dir)), adapters=parse([f"persona={lora_run}"]))
    with serving(app) as url:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        assert {m.id for m in c.models.list().data} == {"tiny", "persona"}
        got = {}

        def ask(model):
            got[model] = c.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8).choices[0].message.content
        threads = [threading.Thread(target=ask, args=(m,)) for m in ("tiny", "persona")]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert got == {"tiny": want_base, "persona": want_lora}
        for name in ("../persona", str(lora_run), "persona/../tiny"):
            with pytest.raises(openai.NotFoundError):
                c.chat.completions.create(model=name, messages=MESSAGES, max_tokens=2)


# -- limits -----------------------------------------------------------------
def test_body_limit_413(engine):
    with serving(_app(engine, max_body_bytes=2000)) as url:
        big = {"messages": [{"role": "user", "content": "x" * 5000}]}
        r = httpx.post(f"{url}/v1/chat/completions", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert httpx.post(f"{url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2}).status_code == 200


def test_max_tokens_capped(engine):
    with serving(_app(engine, max_tokens_cap=5)) as url:
        r = httpx.post(f"{url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 500}).json()
        assert r["usage"]["completion_tokens"] <= 5


def test_queue_full_answers_429_with_retry_after(engine):
    app = _app(engine, max_batch=1, max_waiting=1)
    batcher = app.state.batcher
    with serving(app) as url:
        results = []
        with engine.lock:  # the batcher cannot run: the first request stays waiting
            t = threading.Thread(target=lambda: results.append(httpx.post(
                f"{url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2}, timeout=60)))
            t.start()
            deadline = time.monotonic() + 20
            while batcher.waiting.qsize() < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            r = httpx.post(f"{url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2})
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "queue_full"
        t.join(60)
        assert results[0].status_code == 200


def test_disconnect_mid_stream_frees_the_slot(engine):
    app = _app(engine, max_batch=1)
    batcher = app.state.batcher
    with serving(app) as url:
        body = {"messages": MESSAGES, "max_tokens": 1000, "stream": True, "temperature": 1.0, "seed": 1}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            for _ in range(6):
                next(lines)
            sent = batcher.stats["tokens"]  # what had been decoded when the client left
        deadline = time.monotonic() + 20
        while batcher.rows and time.monotonic() < deadline:
            time.sleep(0.05)
        # decoding stopped within a few steps of the disconnect, not at max_tokens
        assert not batcher.rows and batcher.stats["tokens"] <= sent + 8, (sent, batcher.stats["tokens"])
        r = httpx.post(f"{url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 3}, timeout=30)
        assert r.status_code == 200  # the one slot is free again


@pytest.mark.parametrize("field,value", [("seed", 2**64), ("seed", -2**63 - 1), ("n", 0), ("n", 9)])
def test_out_of_range_seed_and_n_are_400s(engine, field, value):
    with serving(_app(engine)) as url:
        r = httpx.post(f"{url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2, field: value})
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text


def test_largest_seed_with_two_choices_answers_both(engine):
    app = _app(engine)
    with serving(app) as url:
        r = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "messages": MESSAGES, "max_tokens": 3, "n": 2, "seed": 2**63 - 1, "temperature": 1.0})
        assert r.status_code == 200 and len(r.json()["choices"]) == 2
        batcher, deadline = app.state.batcher, time.monotonic() + 10
        while (batcher.rows or not batcher.waiting.empty()) and time.monotonic() < deadline:
            time.sleep(0.01)  # the batcher drops finished rows on its own thread, just after the reply
        assert not batcher.rows and batcher.waiting.empty()


def test_a_failing_row_is_an_openai_500_for_its_request_alone(engine, monkeypatch):
    from strop.serve import batching

    real = batching._pick

    def pick(logits, r):
        if r.seed == 99:
            raise RuntimeError("poisoned row")
        return real(logits, r)

    monkeypatch.setattr(batching, "_pick", pick)
    with serving(_app(engine)) as url:
        body = {"messages": MESSAGES, "max_tokens": 30, "temperature": 1.0}
        results = {}
        threads = [threading.Thread(target=lambda k=k, extra=extra: results.__setitem__(k, httpx.post(
            f"{url}/v1/chat/completions", json={**body, **extra}, timeout=60)))
            for k, extra in (("bad", {"seed": 99}), ("good", {"seed": 1}), ("tiny", {"temperature": 1e-300}))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        bad = results["bad"]
        assert bad.status_code == 500 and bad.json()["error"]["code"] == "generation_failed", bad.text
        assert results["good"].status_code == 200 and results["tiny"].status_code == 200


@pytest.mark.slow
def test_drain_timeout_cut_off_is_one_line_and_exit_6(tiny_model_dir):
    port = free_port()
    proc = subprocess.Popen(strop_cmd("serve", str(tiny_model_dir), "--port", str(port), "--drain-timeout", "0.2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", proc)
        body = {"messages": MESSAGES, "max_tokens": 900, "stream": True, "temperature": 1.0, "seed": 5}
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60) as s:
            lines = s.iter_lines()
            next(lines)
            proc.send_signal(signal.SIGTERM)
            try:
                for _ in lines:
                    pass
            except httpx.HTTPError:
                pass  # the server cut the stream off
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert code == 6, err
    assert "Traceback" not in err and "cut off" in err
    assert [line for line in err.splitlines() if "stopped" in line] == [err.strip().splitlines()[-1]]


# -- routes -------------------------------------------------------------------
def test_completions_plain_and_stream(engine):
    prompt = "The sea is"
    with serving(_app(engine)) as url:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        plain = c.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=1.0, seed=4)
        assert plain.object == "text_completion" and plain.usage.prompt_tokens == len(engine.tok(prompt)["input_ids"])
        chunks = list(c.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=1.0, seed=4,
                                           stream=True, stream_options={"include_usage": True}))
        assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == plain.choices[0].text
        assert chunks[-1].usage == plain.usage
        text = c.completions.create(model="tiny", prompt=prompt, max_tokens=10).choices[0].text
        ids = engine.tok(prompt, add_special_tokens=False)["input_ids"]
        assert text == engine.complete_ids(ids, max_new_tokens=10).text  # no chat template on this route


def test_metrics_prometheus_text(engine):
    with serving(_app(engine, api_key="k")) as url:
        assert httpx.get(f"{url}/metrics").status_code == 401
        h = {"Authorization": "Bearer k"}
        httpx.post(f"{url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 3}, headers=h)
        text = httpx.get(f"{url}/metrics", headers=h).text
        assert 'strop_requests_total{route="/v1/chat/completions",status="200"} 1' in text
        tokens = [float(line.split()[-1]) for line in text.splitlines() if line.startswith("strop_generated_tokens_total")]
        assert tokens and tokens[0] >= 1


# -- the three ways in agree, and shutdown --------------------------------------
@pytest.mark.slow
def test_python_api_server_and_cli_agree(lora_run):
    import strop

    prompt = "Say something about the sea."
    api = strop.load(str(lora_run)).generate(prompt, max_new_tokens=12)
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(strop_cmd("serve", str(lora_run), "--port", str(port)), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", proc)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": prompt}], "max_tokens": 12}).json()
        # SIGTERM while a stream is in flight: it finishes, then the server exits 0
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 40, "stream": True,
                "temperature": 1.0, "seed": 2}
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60) as s:
            lines = s.iter_lines()
            next(lines)
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    cli = subprocess.run(strop_cmd("generate", str(lora_run), "--prompt", prompt, "--max-new-tokens", "12"),
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert r["choices"][0]["message"]["content"] == api == cli.stdout[:-1]
    assert len(set(api)) > 2, repr(api)  # not an empty or all-newline answer


@pytest.mark.slow
def test_vllm_engine_missing_is_one_line(tiny_model_dir):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    r = subprocess.run(strop_cmd("serve", str(tiny_model_dir), "--engine", "vllm"), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "vLLM is not installed" in r.stderr
