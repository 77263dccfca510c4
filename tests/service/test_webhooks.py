"""Webhooks for job outcomes: every request a local receiver gets is checked with the official openai SDK,
as a customer's receiver would check it; retries, give-up and restart are timed with tiny delays."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

import openai
import pytest
from openai.types.webhooks import (FineTuningJobCancelledWebhookEvent, FineTuningJobFailedWebhookEvent,
                                   FineTuningJobSucceededWebhookEvent)

from conftest import free_port
from strop.core.errors import StropError
from strop.service.webhooks import (EVENT_FOR_STATUS, EVENT_TYPES, SECRET_HINT, Endpoint, Webhooks, new_secret,
                                    parse_endpoints)

SECRET = new_secret()
FAST = {"base_delay_s": 0.05, "max_delay_s": 1.0, "timeout_s": 2.0}


class Receiver:
    """An http.server receiver; ``answers`` are the statuses of the next requests (then 200)."""

    def __init__(self, secret: str = SECRET, answers: list[int] | None = None, redirect_to: str | None = None) -> None:
        self.client = openai.OpenAI(api_key="x", webhook_secret=secret)
        self.answers = list(answers or [])
        self.redirect_to = redirect_to
        self.requests: list[dict] = []  # {"at", "headers", "event" | "error"}

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        seen = {"at": time.monotonic(), "headers": headers}
        try:
            seen["event"] = self.client.webhooks.unwrap(body, headers)
        except openai.InvalidWebhookSignatureError as exc:
            seen["error"] = exc
        self.requests.append(seen)
        if "error" in seen:
            return 400, b"invalid signature"
        if self.redirect_to:
            return 307, b""
        return (self.answers.pop(0) if self.answers else 200), b"{}"

    @property
    def events(self) -> list:
        return [r["event"] for r in self.requests if "event" in r]


@contextlib.contextmanager
def serving(receiver: Receiver, port: int = 0) -> Iterator[str]:
    """Run ``receiver`` on 127.0.0.1; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server naming)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status, answer = receiver.handle(dict(self.headers.items()), body)
            self.send_response(status)
            if receiver.redirect_to:
                self.send_header("Location", receiver.redirect_to)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/strop"
    finally:
        server.shutdown()
        server.server_close()


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.01)


@contextlib.contextmanager
def running(db, urls: list[str], **options) -> Iterator[Webhooks]:
    hooks = Webhooks(db, [Endpoint(url, SECRET) for url in urls], **{**FAST, **options})
    hooks.start()
    try:
        yield hooks
    finally:
        hooks.stop()


def settled(hooks: Webhooks) -> bool:
    rows = hooks.deliveries()
    return bool(rows) and all(r["status"] != "pending" for r in rows)


# -- (a) what arrives -------------------------------------------------------------
def test_each_outcome_arrives_at_every_endpoint_and_verifies_with_the_openai_sdk(tmp_path):
    first, second = Receiver(), Receiver()
    with serving(first) as url1, serving(second) as url2, running(tmp_path / "service.db", [url1, url2]) as hooks:
        for status in ("succeeded", "failed", "cancelled"):
            hooks.emit(EVENT_FOR_STATUS[status], f"ftjob-{status}")
        wait_until(lambda: settled(hooks) and len(hooks.deliveries()) == 6)

    classes = {"fine_tuning.job.succeeded": FineTuningJobSucceededWebhookEvent,
               "fine_tuning.job.failed": FineTuningJobFailedWebhookEvent,
               "fine_tuning.job.cancelled": FineTuningJobCancelledWebhookEvent}
    for receiver in (first, second):
        assert [type(e) for e in receiver.events] == list(classes.values())
        assert [(e.type, e.data.id) for e in receiver.events] == [(t, f"ftjob-{t.rsplit('.', 1)[1]}") for t in EVENT_TYPES]
        for event, request in zip(receiver.events, receiver.requests):
            assert event.object == "event" and event.id.startswith("evt_") and abs(event.created_at - time.time()) < 60
            assert request["headers"]["Content-Type"] == "application/json"
            assert request["headers"]["User-Agent"].startswith("strop/")
            assert request["headers"]["Webhook-Signature"].startswith("v1,")
    # one event id per event, the same at both endpoints; one webhook-id per delivery
    assert [e.id for e in first.events] == [e.id for e in second.events]
    assert len({r["id"] for r in hooks.deliveries()}) == 6
    assert {(r["status"], r["attempts"], r["last_error"]) for r in hooks.deliveries()} == {("delivered", 1, None)}


def test_emit_only_queues_and_rejects_unknown_types(tmp_path):
    receiver = Receiver()
    with serving(receiver) as url:
        hooks = Webhooks(tmp_path / "service.db", [Endpoint(url, SECRET)], **FAST)
        hooks.emit("fine_tuning.job.succeeded", "ftjob-1")  # not started: the row waits, nothing is sent
        assert [(r["status"], r["attempts"]) for r in hooks.deliveries("ftjob-1")] == [("pending", 0)]
        with pytest.raises(ValueError, match="unknown webhook event type 'fine_tuning.job.paused'"):
            hooks.emit("fine_tuning.job.paused", "ftjob-1")
        hooks.start()
        try:
            wait_until(lambda: settled(hooks))
        finally:
            hooks.stop()
    assert receiver.events[0].data.id == "ftjob-1" and len(receiver.requests) == 1
    assert hooks.deliveries("ftjob-other") == []


# -- (b) retries ------------------------------------------------------------------
def test_errors_are_retried_with_growing_delays_under_one_webhook_id(tmp_path):
    receiver = Receiver(answers=[500, 500])
    with serving(receiver) as url, running(tmp_path / "service.db", [url], base_delay_s=0.2) as hooks:
        hooks.emit("fine_tuning.job.succeeded", "ftjob-1")
        wait_until(lambda: settled(hooks))

    [row] = hooks.deliveries()
    assert (row["status"], row["attempts"]) == ("delivered", 3)
    assert row["last_error"].startswith("HTTP 500")  # kept: the receiver was flaky
    at = [r["at"] for r in receiver.requests]
    assert at[1] - at[0] >= 0.2 - 0.02 and at[2] - at[1] >= 0.4 - 0.02  # 0.2 s, then 0.4 s
    assert {r["headers"]["Webhook-Id"] for r in receiver.requests} == {row["id"]}  # receivers dedupe on it
    assert len(receiver.events) == 3  # each attempt is signed afresh and verifies


def test_backoff_doubles_up_to_the_cap(tmp_path):
    hooks = Webhooks(tmp_path / "service.db", [], base_delay_s=1.0, max_delay_s=300.0)
    assert [hooks._delay(n) for n in range(1, 11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert hooks._delay(5000) == 300


# -- (c) the check can fail -------------------------------------------------------
def test_a_receiver_with_another_secret_rejects_every_attempt(tmp_path):
    receiver = Receiver(secret=new_secret())
    with serving(receiver) as url, running(tmp_path / "service.db", [url], max_attempts=2) as hooks:
        hooks.emit("fine_tuning.job.failed", "ftjob-1")
        wait_until(lambda: settled(hooks))

    assert len(receiver.requests) == 2 and receiver.events == []
    assert all(isinstance(r["error"], openai.InvalidWebhookSignatureError) for r in receiver.requests)
    [row] = hooks.deliveries()
    assert row["status"] == "failed" and row["last_error"] == "HTTP 400 Bad Request: invalid signature"


# -- (d) giving up ----------------------------------------------------------------
def test_a_receiver_that_never_accepts_ends_failed_and_is_left_alone(tmp_path):
    receiver = Receiver(answers=[503] * 100)
    with serving(receiver) as url, running(tmp_path / "service.db", [url], max_attempts=3) as hooks:
        hooks.emit("fine_tuning.job.cancelled", "ftjob-1")
        wait_until(lambda: settled(hooks))
        time.sleep(0.5)  # ten base delays: a retry after giving up would have come
        assert len(receiver.requests) == 3
    [row] = hooks.deliveries()
    assert (row["status"], row["attempts"]) == ("failed", 3)
    assert row["last_error"].startswith("HTTP 503")


def test_a_receiver_that_does_not_answer_in_time_counts_as_a_failed_attempt(tmp_path):
    with socket.socket() as silent:  # accepts connections (the kernel does) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        with running(tmp_path / "service.db", [url], max_attempts=2, timeout_s=0.2) as hooks:
            hooks.emit("fine_tuning.job.succeeded", "ftjob-1")
            wait_until(lambda: settled(hooks))
    [row] = hooks.deliveries()
    assert (row["status"], row["attempts"]) == ("failed", 2) and "timed out" in row["last_error"]


def test_redirects_are_not_followed(tmp_path):
    elsewhere = Receiver()
    with serving(elsewhere) as target, serving(Receiver(redirect_to=target)) as url, \
            running(tmp_path / "service.db", [url], max_attempts=1) as hooks:
        hooks.emit("fine_tuning.job.succeeded", "ftjob-1")
        wait_until(lambda: settled(hooks))
    assert elsewhere.requests == []
    [row] = hooks.deliveries()
    assert row["status"] == "failed" and "HTTP 307 redirect" in row["last_error"] and "not followed" in row["last_error"]


# -- (e) restarts -----------------------------------------------------------------
def test_a_pending_delivery_survives_a_restart(tmp_path):
    db, port = tmp_path / "service.db", free_port()
    url = f"http://127.0.0.1:{port}/hooks/strop"
    with running(db, [url], max_attempts=50) as hooks:  # nothing listens yet
        hooks.emit("fine_tuning.job.succeeded", "ftjob-1")
        wait_until(lambda: hooks.deliveries()[0]["attempts"] >= 2)
    [row] = hooks.deliveries()
    assert row["status"] == "pending" and "Connection refused" in row["last_error"]

    receiver = Receiver()
    with serving(receiver, port), running(db, [url], max_attempts=50) as restarted:
        wait_until(lambda: settled(restarted))
    assert [(e.type, e.data.id) for e in receiver.events] == [("fine_tuning.job.succeeded", "ftjob-1")]
    assert restarted.deliveries()[0]["status"] == "delivered"


def test_a_delivery_to_an_endpoint_dropped_at_restart_is_marked_failed(tmp_path):
    db = tmp_path / "service.db"
    hooks = Webhooks(db, [Endpoint("http://127.0.0.1:9/gone", SECRET)], **FAST)
    hooks.emit("fine_tuning.job.succeeded", "ftjob-1")  # the service stopped before sending it
    with running(db, []) as restarted:
        wait_until(lambda: settled(restarted))
    [row] = restarted.deliveries()
    assert (row["status"], row["attempts"]) == ("failed", 0) and "no longer configured" in row["last_error"]


# -- (f) configuration ------------------------------------------------------------
def test_good_configuration():
    assert parse_endpoints([], None) == []
    endpoints = parse_endpoints(["https://example.com/a", "http://127.0.0.1:8080/b?x=1", "https://example.com/a"],
                                SECRET)
    assert [e.url for e in endpoints] == ["https://example.com/a", "http://127.0.0.1:8080/b?x=1"]
    assert SECRET not in repr(endpoints)
    assert parse_endpoints(["https://example.com/a"], SECRET + "\n")[0].secret == SECRET  # as read from a file
    assert new_secret() != new_secret() and len(Endpoint("https://example.com", new_secret()).key) == 32


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "localhost:8000/hook", "http:///hook", "example.com",
                                 "http://example.com:99999/", "http://exa mple.com/", "https://example.com/\n",
                                 "https://exämple.com/", "https://user:pw@example.com/", "http://[::1/hook", ""])
def test_bad_webhook_urls_are_one_line_errors_naming_the_option(url):
    with pytest.raises(StropError, match="^--webhook ") as err:
        parse_endpoints(["https://example.com/fine", url], SECRET)
    assert "\n" not in str(err.value) and "pw" not in str(err.value)


@pytest.mark.parametrize("secret", [None, "abc", SECRET[len("whsec_"):], "whsec_", "whsec_c2hvcnQ=",
                                    "whsec_!!!!" + SECRET[10:], SECRET.rstrip("="), "whsec_" + "-_" * 20],
                         ids=["none", "no-prefix-short", "no-prefix", "empty", "too-short", "not-base64", "unpadded",
                              "url-alphabet"])  # ids, not the random secret: pytest-xdist workers must collect alike
def test_bad_secrets_are_one_line_errors_naming_the_option_and_env(secret):
    with pytest.raises(StropError, match="--webhook-secret.*STROP_WEBHOOK_SECRET") as err:
        parse_endpoints(["https://example.com/hook"], secret)
    assert "\n" not in str(err.value)
    assert secret is None or str(err.value) == SECRET_HINT  # the same line for every bad secret: never echoed
