"""The HTTP front door shared by ``strop serve`` and ``strop service``.

One ASGI middleware does, in this order, before any route reads a byte of
the body:

1. **Host check.** A server bound to loopback answers only requests whose
   ``Host`` names a loopback address, so a web page that rebinds its own DNS
   name to 127.0.0.1 cannot talk to it (DNS rebinding). A server bound to
   one address also accepts that address; one bound to every address
   (``0.0.0.0``, ``::``) cannot know its names and accepts any.
2. **Same origin for state-changing requests.** A POST, PUT, PATCH or DELETE
   that a browser marks as cross-origin (``Origin`` not this host, or
   ``Sec-Fetch-Site: cross-site``/``same-site``) is refused, key or not:
   that is how a page on another site would post a form to a loopback
   service. A request authenticated only by the studio's cookie must also
   carry ``X-Strop-Studio``, a header no cross-origin page can add without a
   CORS preflight, which strop never grants.
3. **Authentication**, from the bearer key or the studio's HttpOnly cookie,
   for every path but the few a caller marks public.
4. **Body limit while streaming.** A declared ``Content-Length`` over the
   limit is refused at once; a chunked body is counted as it arrives and
   stopped at the limit, so memory never holds more than the limit.
5. **Response headers**: ``X-Content-Type-Options``, ``X-Frame-Options``,
   ``Referrer-Policy`` and a ``Content-Security-Policy``.

Starlette's TrustedHostMiddleware covers (1) only, and neither it nor
FastAPI's dependencies run before FastAPI reads a request body, which is why
this is written here.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import sys
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.errors import StropError

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
COOKIE = "strop_key"
STUDIO_HEADER = "x-strop-studio"
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD = {"0.0.0.0", "::", ""}
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]
API_CSP = "default-src 'none'; frame-ancestors 'none'"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a body passes its limit; answered as 413."""

    def __init__(self, limit: int, message: str | None = None) -> None:
        super().__init__(413, message or f"request body over the {limit}-byte limit")
        self.limit = limit


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None, no_auth: bool) -> None:
    """Refuse to serve beyond loopback without a key, unless ``--no-auth`` says so (then warn)."""
    if api_key or is_loopback(host):
        return
    if not no_auth:
        raise StropError(f"option --host {host}: refusing to serve beyond this machine without an API key; "
                         "pass --api-key KEY (or set STROP_API_KEY), or --no-auth to serve without one")
    print(f"strop: WARNING: serving on {host} with no API key (--no-auth): anyone who can reach this port "
          "can use it", file=sys.stderr, flush=True)


def allowed_hosts(bind_host: str, extra: tuple[str, ...] = ()) -> frozenset[str] | None:
    """Host names a server bound to ``bind_host`` answers to; None: any (bound to every address)."""
    host = bind_host.strip("[]").lower()
    if host in WILDCARD:
        return None
    return frozenset({*LOOPBACK, host, *(h.lower() for h in extra)})


def _host_name(value: str) -> str:
    """'example.org:8000' -> 'example.org'; '[::1]:8000' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def authorized(headers: dict[str, str], cookies: str, api_key: str | None, *, cookie: bool = True,
               key_header: str | None = None) -> bool:
    """A bearer key, the key in ``key_header`` (the tinker SDK's X-API-Key) or (where ``cookie``) the
    studio's cookie; constant-time either way."""
    if api_key is None:
        return True
    header = headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        given = header[7:]
    elif key_header is not None and key_header in headers:
        given = headers[key_header]
    else:
        given = unquote(cookie_value(cookies, COOKIE) or "") if cookie else ""
    return hmac.compare_digest(given.encode(), api_key.encode())


def cookie_value(cookies: str, name: str) -> str | None:
    for part in cookies.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


class Guard:
    """The checks above as ASGI middleware: ``app.add_middleware(Guard, ...)``."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, hosts: frozenset[str] | None = None,
                 public: Callable[[str, str], bool] = lambda method, path: False,
                 body_limit: Callable[[str], int] = lambda path: 1 << 20, cookie: bool = False,
                 csp: Callable[[str], str] = lambda path: API_CSP,
                 on_status: Callable[[str, int], None] | None = None,
                 too_large: Callable[[str, int], str] = lambda path, limit: f"request body over the {limit}-byte limit",
                 key_header: str | None = None) -> None:
        self.app, self.api_key, self.hosts, self.public = app, api_key, hosts, public
        self.key_header = key_header
        self.body_limit, self.cookie, self.csp, self.on_status = body_limit, cookie, csp, on_status
        self.too_large = too_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        send = self._with_headers(send, path)
        refusal = self._refusal(method, path, headers)
        if refusal is not None:
            await _answer(send, *refusal)
            return
        limit = self.body_limit(path)
        declared = headers.get("content-length", "")
        message = self.too_large(path, limit)
        if declared.isdigit() and int(declared) > limit:
            await _answer(send, 413, message, "request_too_large")
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, _limited(receive, limit, message), tracking_send)
        except BodyTooLarge as exc:  # raised past every handler: answer here if nothing was sent yet
            if started:
                raise
            await _answer(send, 413, str(exc.detail), "request_too_large")

    def _refusal(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str, str] | None:
        host = headers.get("host", "")
        if self.hosts is not None and _host_name(host) not in self.hosts:
            return 400, f"Host {host!r} is not a name this server answers to", "invalid_host"
        if method in UNSAFE:
            origin = headers.get("origin")
            if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != host.lower()):
                return 403, f"cross-origin {method} from {origin} refused", "cross_origin"
            if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
                return 403, f"cross-site {method} refused", "cross_origin"
        if self.public(method, path):
            return None
        if not authorized(headers, headers.get("cookie", ""), self.api_key, cookie=self.cookie, key_header=self.key_header):
            return 401, "Incorrect or missing API key; send 'Authorization: Bearer KEY'", "invalid_api_key"
        by_cookie = self.api_key is not None and not headers.get("authorization") and \
            not (self.key_header and headers.get(self.key_header))
        if method in UNSAFE and by_cookie and STUDIO_HEADER not in headers:
            return 403, f"a {method} authenticated by the studio's cookie must send the {STUDIO_HEADER} header", \
                "cross_origin"
        return None

    def _with_headers(self, send: Send, path: str) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                if b"content-security-policy" not in names:
                    extra.append((b"content-security-policy", self.csp(path).encode()))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
                if self.on_status is not None:
                    self.on_status(path, message["status"])
            await send(message)
        return wrapped


def _limited(receive: Receive, limit: int, refusal: str) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit, refusal)
        return message
    return counted


async def _answer(send: Send, status: int, message: str, code: str) -> None:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
