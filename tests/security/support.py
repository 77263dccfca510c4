"""Helpers for the security tests: a service app in-process (no worker, no training) and an
ASGI driver that counts every body byte the app pulls, to show what is read before refusing."""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the suite's conftest helpers

KEY = "sk-security-test"


def rows(n: int = 6) -> bytes:
    return ("\n".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                               {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]})
                      for i in range(n)) + "\n").encode()


def make_service(workdir: Path, **kw):
    from strop.service.app import create_service_app

    return create_service_app(workdir, start_worker=False, **kw)


def drive(app, method: str, path: str, headers: dict[str, str], chunks: list[bytes]) -> tuple[int, dict, bytes, int]:
    """Call ``app`` as an ASGI server would, streaming ``chunks`` as the body.

    Returns (status, response headers, response body, body bytes the app pulled)."""
    pulled = 0
    sent: list[dict] = []
    queue = list(chunks)

    async def receive():
        nonlocal pulled
        if queue:
            chunk = queue.pop(0)
            pulled += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": bool(queue)}
        await asyncio.sleep(3600)  # a client that keeps the connection open

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 60))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body, pulled
