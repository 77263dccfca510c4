"""Webhooks for fine-tuning job outcomes, sent and signed the way OpenAI sends its own.

When a job ends, the service POSTs an event to every configured URL::

    {"id": "evt_...", "object": "event", "created_at": 1700000000,
     "type": "fine_tuning.job.succeeded", "data": {"id": "ftjob-..."}}

signed per the Standard Webhooks spec (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256>``), so a receiver written for
OpenAI's webhooks verifies it with ``openai.OpenAI().webhooks.unwrap``.
docs/webhooks.md describes it for operators.

Public API:

* ``Endpoint(url, secret)``: one receiver and the ``whsec_...`` secret it checks with.
* ``parse_endpoints(urls, secret) -> list[Endpoint]``: checks ``--webhook`` URLs and
  ``--webhook-secret`` / ``STROP_WEBHOOK_SECRET``; a bad one is a one-line ``StropError``.
* ``new_secret() -> str``: a fresh ``whsec_`` secret for the operator to hand out.
* ``EVENT_TYPES`` and ``EVENT_FOR_STATUS`` (job status -> event type).
* ``Webhooks(db_path, endpoints, *, max_attempts=8, base_delay_s=1.0, max_delay_s=300.0, timeout_s=10.0)``:
  ``start()`` / ``stop(timeout=5.0)`` the delivery thread; ``emit(event_type, job_id)`` queues
  one delivery per endpoint and returns at once; ``deliveries(job_id=None)`` lists them.

Deliveries are rows of ``webhook_deliveries`` in the service's SQLite file, so a
restart resumes the pending ones. Each attempt that fails (no connection,
timeout, an answer outside 2xx, a redirect) is retried after
``base_delay_s * 2**(attempts - 1)`` seconds, at most ``max_delay_s``; after
``max_attempts`` the row is marked failed and keeps its last error. Delivery
is at least once: a receiver should drop a ``webhook-id`` it has already seen.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http.client
import json
import secrets
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..core import __version__
from ..core.errors import StropError
from .store import connect

EVENT_TYPES = ("fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled")
EVENT_FOR_STATUS = {"succeeded": EVENT_TYPES[0], "failed": EVENT_TYPES[1], "cancelled": EVENT_TYPES[2]}

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_deliveries (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, event_id TEXT NOT NULL, job_id TEXT NOT NULL,
  type TEXT NOT NULL, url TEXT NOT NULL, body TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
  next_at REAL, last_error TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries(status, next_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_job ON webhook_deliveries(job_id, seq);
"""
COLUMNS = "id, event_id, job_id, type, url, status, attempts, last_error, created_at, updated_at"

SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES = 16  # a shorter HMAC key is guessable; new_secret() makes 32
USER_AGENT = f"strop/{__version__} (webhooks)"
ERROR_PAUSE_S = 5.0  # after an unexpected error (e.g. the database locked for 30 s), before the thread tries again
SECRET_HINT = ("--webhook-secret / STROP_WEBHOOK_SECRET must be 'whsec_' followed by standard base64 of at least "
               f"{MIN_KEY_BYTES} bytes (strop.service.webhooks.new_secret() makes one)")


@dataclass(frozen=True)
class Endpoint:
    """A receiver; checked when made, so a bad one stops the service at start-up, not at the first delivery."""

    url: str
    secret: str = field(repr=False)  # kept out of reprs so it never lands in a log line

    def __post_init__(self) -> None:
        _check_url(self.url)
        _key(self.secret)

    @property
    def key(self) -> bytes:
        return _key(self.secret)


# -- configuration ----------------------------------------------------------------
def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def parse_endpoints(urls: list[str], secret: str | None) -> list[Endpoint]:
    """The endpoints of ``--webhook URL`` (repeatable; a repeated URL counts once), all signed with ``secret``."""
    if not urls:
        return []
    if secret is None:
        raise StropError("--webhook needs a signing secret: pass --webhook-secret or set STROP_WEBHOOK_SECRET "
                         "(receivers verify each event with it)")
    secret = secret.strip()  # a secret read from a file or an env file often ends in a newline
    return [Endpoint(url, secret) for url in dict.fromkeys(urls)]


def _check_url(url: str) -> None:
    # Printable ASCII only: urllib would send other characters raw or fail at send time, long after start-up.
    if not all(33 <= ord(c) < 127 for c in url):
        raise StropError(f"--webhook {url!r}: spaces, control or non-ASCII characters are not allowed "
                         "(percent-encode them)")
    try:
        parts = urlsplit(url)
        parts.port  # parsed lazily; a bad port would otherwise surface only at the first delivery
    except ValueError as exc:
        raise StropError(f"--webhook {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StropError(f"--webhook {url!r}: expected an http:// or https:// URL with a host")
    if parts.username is not None:  # urllib would not send them, and the URL is stored with every delivery
        raise StropError(f"--webhook URL for {parts.hostname}: user:password@ is not supported; the signature "
                         "already proves the sender")


def _key(secret: str) -> bytes:
    """The HMAC key inside ``whsec_<base64>``; the message never repeats the secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise StropError(SECRET_HINT)
    try:
        # Strict: the SDK's lenient decoder would silently drop url-safe '-'/'_' and check with another key.
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except binascii.Error:
        raise StropError(SECRET_HINT) from None
    if len(key) < MIN_KEY_BYTES:
        raise StropError(SECRET_HINT)
    return key


# -- one attempt ------------------------------------------------------------------
def _event(event_type: str, job_id: str, created_at: int) -> tuple[str, str]:
    """(event id, body): the body in the shape of the openai SDK's FineTuningJob*WebhookEvent types."""
    event_id = f"evt_{uuid.uuid4().hex}"
    event = {"id": event_id, "object": "event", "created_at": created_at, "type": event_type, "data": {"id": job_id}}
    return event_id, json.dumps(event, separators=(",", ":"))


def _headers(endpoint: Endpoint, webhook_id: str, body: bytes) -> dict[str, str]:
    # Signed at each attempt, not at emit: receivers refuse a timestamp older than 5 minutes,
    # and a retry may come hours later.
    timestamp = str(int(time.time()))
    mac = hmac.new(endpoint.key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return {"webhook-id": webhook_id, "webhook-timestamp": timestamp,
            "webhook-signature": "v1," + base64.b64encode(mac.digest()).decode(),
            "content-type": "application/json", "user-agent": USER_AGENT}


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect could hand the signed event to another host; it counts as a failed attempt instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _send(endpoint: Endpoint, webhook_id: str, body: bytes, timeout_s: float) -> str | None:
    """POST one delivery; None when the receiver answered 2xx, else why not (one line)."""
    request = urllib.request.Request(endpoint.url, data=body, method="POST",
                                     headers=_headers(endpoint, webhook_id, body))
    try:
        with _OPENER.open(request, timeout=timeout_s):
            return None  # urllib raises HTTPError for every status outside 2xx
    except urllib.error.HTTPError as exc:
        with exc:  # it holds the connection open until closed
            return _http_error(exc)
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, DNS, TLS, timeout
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return _one_line(f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason))


def _http_error(exc: urllib.error.HTTPError) -> str:
    if 300 <= exc.code < 400:
        return _one_line(f"HTTP {exc.code} redirect to {exc.headers.get('location')!r} not followed; "
                         "configure the final URL")
    try:
        detail = exc.read(200).decode("utf-8", "replace")  # the receiver's reason, e.g. a failed signature check
    except (OSError, http.client.HTTPException):
        detail = ""
    return _one_line(f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else ""))


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


# -- the queue --------------------------------------------------------------------
class Webhooks:
    """A durable outbox: ``emit`` writes rows, one thread sends them in order of when they are due."""

    def __init__(self, db_path: str | Path, endpoints: list[Endpoint], *, max_attempts: int = 8,
                 base_delay_s: float = 1.0, max_delay_s: float = 300.0, timeout_s: float = 10.0) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.db_path = Path(db_path)
        self.endpoints = {e.url: e for e in endpoints}
        self.max_attempts, self.timeout_s = max_attempts, timeout_s
        self.base_delay_s, self.max_delay_s = base_delay_s, max_delay_s
        self._lock = threading.Lock()  # as in store.py: one writer at a time instead of "database is locked" retries
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def _db(self):
        return connect(self.db_path)

    # -- caller side ------------------------------------------------------------
    def start(self) -> None:
        """Start sending, beginning with whatever a previous run left pending."""
        if self._thread is not None and self._thread.is_alive():
            if not self._halt.is_set():
                return
            self._thread.join()  # a stop() that timed out: its attempt ends first, so no second thread repeats it
        self._halt.clear()
        self._thread = threading.Thread(target=self._run, name="strop-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread; an attempt in flight may finish (bounded by timeout_s). Pending rows stay for the next start."""
        self._halt.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def emit(self, event_type: str, job_id: str) -> None:
        """Queue ``event_type`` for ``job_id`` to every endpoint; never waits on the network."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown webhook event type {event_type!r}; expected one of {', '.join(EVENT_TYPES)}")
        if not self.endpoints:
            return
        now = int(time.time())
        event_id, body = _event(event_type, job_id, now)  # one body for every endpoint and attempt: one event
        rows = [(f"wh_{uuid.uuid4().hex}", event_id, job_id, event_type, url, body, "pending", now, now, now)
                for url in self.endpoints]
        with self._lock, self._db() as db:
            db.executemany("INSERT INTO webhook_deliveries (id, event_id, job_id, type, url, body, status, next_at, "
                           "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self._wake.set()

    def deliveries(self, job_id: str | None = None) -> list[dict]:
        """Every delivery (of ``job_id``), oldest first: id (the webhook-id), event_id, job_id, type, url,
        status (pending | delivered | failed), attempts, last_error, created_at, updated_at."""
        sql, args = f"SELECT {COLUMNS} FROM webhook_deliveries", ()
        if job_id is not None:
            sql, args = sql + " WHERE job_id = ?", (job_id,)
        with self._db() as db:
            return [dict(r) for r in db.execute(sql + " ORDER BY seq", args).fetchall()]

    # -- delivery thread --------------------------------------------------------
    def _run(self) -> None:
        while not self._halt.is_set():
            self._wake.clear()  # before reading, so an emit after the read still ends the wait below
            try:
                row = self._next_pending()
                if row is not None and row["next_at"] <= time.time():
                    self._attempt(row)
                    continue
                wait = None if row is None else row["next_at"] - time.time()
            except Exception as exc:  # the thread must outlive one bad row or a busy database
                print(f"strop service: webhook error: {exc!r}", file=sys.stderr)
                wait = ERROR_PAUSE_S
            self._wake.wait(wait)

    def _next_pending(self) -> sqlite3.Row | None:
        with self._db() as db:
            return db.execute("SELECT id, url, body, attempts, next_at FROM webhook_deliveries "
                              "WHERE status = 'pending' ORDER BY next_at, seq LIMIT 1").fetchone()

    def _attempt(self, row: sqlite3.Row) -> None:
        endpoint = self.endpoints.get(row["url"])
        if endpoint is None:  # removed from --webhook since it was queued; its secret is gone with it
            self._record(row["id"], "failed", row["attempts"], "endpoint no longer configured (--webhook)")
            return
        error = _send(endpoint, row["id"], row["body"].encode(), self.timeout_s)
        attempts = row["attempts"] + 1
        if error is None:
            self._record(row["id"], "delivered", attempts, None)
        elif attempts >= self.max_attempts:
            self._record(row["id"], "failed", attempts, error)
        else:
            self._record(row["id"], "pending", attempts, error, next_at=time.time() + self._delay(attempts))

    def _delay(self, attempts: int) -> float:
        # The exponent is capped so a large max_attempts cannot overflow the float; the cap is far past max_delay_s.
        return min(self.base_delay_s * 2 ** min(attempts - 1, 60), self.max_delay_s)

    def _record(self, delivery_id: str, status: str, attempts: int, error: str | None,
                next_at: float | None = None) -> None:
        # A delivery that succeeds keeps the error of its last failed attempt: a flaky receiver shows in the table.
        with self._lock, self._db() as db:
            db.execute("UPDATE webhook_deliveries SET status = ?, attempts = ?, last_error = COALESCE(?, last_error), "
                       "next_at = ?, "
                       "updated_at = ? WHERE id = ?", (status, attempts, error, next_at, int(time.time()), delivery_id))
