"""Issue 19.2-4: open binds refused, browsers kept out of loopback services, bodies bounded before and
after authentication. Both servers (`strop serve`'s app and `strop service`'s) go through the same guard."""
from __future__ import annotations

import subprocess

import httpx
import pytest
from fastapi.testclient import TestClient

from conftest import free_port, strop_cmd, wait_for
from support import KEY, drive, make_service, rows

from strop.core.errors import StropError
from strop.http.guard import allowed_hosts, check_bind

AUTH = {"Authorization": f"Bearer {KEY}"}
MB = 1 << 20


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from strop.models.engine import Engine

    return Engine(str(tiny_model_dir))


def serve_app(engine, **kw):
    from strop.serve.server import create_app

    return create_app(engine, model_id="tiny", **kw)


# -- 2: open by default ---------------------------------------------------------
def test_non_loopback_bind_needs_a_key_or_no_auth(capsys):
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None, False)
    check_bind("0.0.0.0", "k", False)
    with pytest.raises(StropError, match="--host 0.0.0.0: refusing .* without an API key"):
        check_bind("0.0.0.0", None, False)
    with pytest.raises(StropError, match="--no-auth"):
        check_bind("192.168.1.5", None, False)
    check_bind("0.0.0.0", None, True)
    assert "WARNING: serving on 0.0.0.0 with no API key" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["serve", "no-such-model"], ["service"], ["studio"]])
@pytest.mark.slow
def test_cli_refuses_open_bind_before_any_work(command, tmp_path, monkeypatch):
    monkeypatch.delenv("STROP_API_KEY", raising=False)
    extra = ["--workdir", str(tmp_path / "wd")] if command[0] != "serve" else []
    r = subprocess.run(strop_cmd(*command, "--host", "0.0.0.0", *extra), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "refusing to serve" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "wd").exists()


def test_no_auth_service_starts_and_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("STROP_API_KEY", raising=False)
    port = free_port()
    proc = subprocess.Popen(strop_cmd("service", "--host", "0.0.0.0", "--port", str(port), "--no-auth",
                                      "--workdir", str(tmp_path / "wd")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", proc)
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["auth"] is False
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert "WARNING: serving on 0.0.0.0 with no API key (--no-auth)" in err


# -- 3: DNS rebinding, cross-origin writes, headers, the cookie ------------------
def test_allowed_hosts_follow_the_bind():
    assert allowed_hosts("0.0.0.0") is None and allowed_hosts("::") is None
    assert allowed_hosts("127.0.0.1") >= {"localhost", "127.0.0.1", "::1"}
    assert "10.0.0.7" in allowed_hosts("10.0.0.7")


def _both(engine, tmp_path, **kw):
    return {"serve": serve_app(engine, bind_host="127.0.0.1", **kw),
            "service": make_service(tmp_path / "wd", bind_host="127.0.0.1", **kw)}


@pytest.mark.parametrize("which", ["serve", "service"])
def test_host_header_must_name_the_bound_address(engine, tmp_path, which):
    app = _both(engine, tmp_path)[which]
    with TestClient(app) as c:
        for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost"):
            assert c.get("/v1/models", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", ""):
            r = c.get("/v1/models", headers={"Host": host})
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host", host


@pytest.mark.parametrize("which", ["serve", "service"])
def test_cross_origin_writes_are_refused(engine, tmp_path, which):
    app = _both(engine, tmp_path)[which]
    path = "/v1/files" if which == "service" else "/v1/chat/completions"
    local = {"Host": "127.0.0.1:8000"}
    with TestClient(app) as c:
        if which == "service":  # the attack: a page on another site posts a form to a keyless loopback service
            r = c.post(path, headers={**local, "Origin": "http://evil.example"},
                       files={"file": ("t.jsonl", rows())}, data={"purpose": "fine-tune"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin"
            assert c.get("/v1/files", headers=local).json()["data"] == []
            r = c.post(path, headers={**local, "Sec-Fetch-Site": "cross-site"}, files={"file": ("t.jsonl", rows())},
                       data={"purpose": "fine-tune"})
            assert r.status_code == 403
            ok = c.post(path, headers={**local, "Origin": "http://127.0.0.1:8000"}, files={"file": ("t.jsonl", rows())},
                        data={"purpose": "fine-tune"})
            assert ok.status_code == 200, ok.text
        else:
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
            assert c.post(path, headers={**local, "Origin": "null"}, json=body).status_code == 403
            assert c.post(path, headers={**local, "Origin": "http://evil.example"}, json=body).status_code == 403
            assert c.post(path, headers=local, json=body).status_code == 200  # a plain API client


def test_cookie_alone_needs_the_studio_header_for_writes(tmp_path):
    app = make_service(tmp_path / "wd", api_key=KEY, bind_host="127.0.0.1")
    local = {"Host": "127.0.0.1:8000"}
    with TestClient(app) as c:
        login = c.post("/studio/login", headers=local, json={"key": KEY})
        assert login.status_code == 200
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/" in cookie
        assert c.get("/v1/files", headers=local).status_code == 200  # reads: the cookie is enough
        up = {"files": {"file": ("t.jsonl", rows())}, "data": {"purpose": "fine-tune"}}
        r = c.post("/v1/files", headers=local, **up)
        assert r.status_code == 403 and "x-strop-studio" in r.json()["error"]["message"]
        assert c.post("/v1/files", headers={**local, "X-Strop-Studio": "1"}, **up).status_code == 200
        assert c.post("/studio/logout", headers=local).status_code == 200
        assert c.get("/v1/files", headers=local).status_code == 401
    with TestClient(app) as c:
        bad = c.post("/studio/login", headers=local, json={"key": "wrong"})
        assert bad.status_code == 401 and "set-cookie" not in bad.headers


def test_studio_sets_no_cookie_from_script_and_pages_carry_a_strict_policy(tmp_path):
    from strop.service.studio import STATIC

    assert "document.cookie" not in "".join(p.read_text() for p in STATIC.iterdir())
    app = make_service(tmp_path / "wd", api_key=KEY)
    with TestClient(app) as c:
        page = c.get("/studio/login.html")
        api = c.get("/v1/models", headers=AUTH)
    for r in (page, api):
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    csp = page.headers["content-security-policy"]
    script = next(p for p in csp.split(";") if p.strip().startswith("script-src"))
    assert "'unsafe-inline'" not in script and "'sha256-" in script  # only the page's own inline script runs


# -- 4: bodies: authenticate first, then stream and stop at the limit -----------
@pytest.mark.parametrize("which", ["serve", "service"])
def test_unauthenticated_chunked_body_is_never_read(engine, tmp_path, which):
    app = {"serve": lambda: serve_app(engine, api_key=KEY),
           "service": lambda: make_service(tmp_path / "wd", api_key=KEY)}[which]()
    chunks = [b"x" * MB] * 300  # 300 MB offered without a Content-Length
    for path in ("/v1/chat/completions", "/v1/files", "/v1/fine_tuning/jobs"):
        status, _, body, pulled = drive(app, "POST", path, {"host": "127.0.0.1", "transfer-encoding": "chunked"}, chunks)
        assert status == 401 and pulled == 0, (path, status, pulled)


@pytest.mark.parametrize("which", ["serve", "service"])
def test_chunked_body_stops_at_the_limit(engine, tmp_path, which):
    limit = 1 << 20
    app = {"serve": lambda: serve_app(engine, api_key=KEY, max_body_bytes=limit),
           "service": lambda: make_service(tmp_path / "wd", api_key=KEY)}[which]()
    headers = {"host": "127.0.0.1", "transfer-encoding": "chunked", "content-type": "application/json",
               "authorization": f"Bearer {KEY}"}
    path = "/v1/chat/completions" if which == "serve" else "/v1/fine_tuning/jobs"
    status, _, body, pulled = drive(app, "POST", path, headers, [b"x" * (64 << 10)] * 4800)  # 300 MB
    assert status == 413 and b"request_too_large" in body
    assert pulled <= limit + (64 << 10), pulled  # at most one chunk past the limit was read


def test_chunked_upload_over_the_service_limit_is_stopped(tmp_path):
    app = make_service(tmp_path / "wd", api_key=KEY, max_upload_bytes=2 * MB)
    boundary = "strop-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    headers = {"host": "127.0.0.1", "transfer-encoding": "chunked", "authorization": f"Bearer {KEY}",
               "content-type": f"multipart/form-data; boundary={boundary}"}
    status, _, body, pulled = drive(app, "POST", "/v1/files", headers, [head] + [rows(400)] * 2000)
    assert status == 413 and b"larger than the limit" in body, body
    assert pulled <= 2 * MB + (1 << 16) + len(rows(400)), pulled
    assert not list((tmp_path / "wd" / "files").glob("*")) if (tmp_path / "wd" / "files").exists() else True
