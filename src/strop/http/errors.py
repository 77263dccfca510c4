"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, for every strop server.

The official ``openai`` client reads ``message`` and ``code`` from this body and raises the matching
``APIStatusError`` subclass, so a strop server fails the way the clients people already use expect.
"""
from __future__ import annotations

from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.errors import StropError
from .guard import BodyTooLarge


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.body = status, {"message": message, "type": type, "param": param, "code": code}
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.body}, status_code=self.status, headers=self.headers)


# pydantic puts the union member it tried ("str", "list[TextPart]"), or the validator kind, in an error's location
_UNION_MEMBERS = {"str", "int", "float", "bool", "none"}
_VALIDATOR_KINDS = ("literal", "constrained-", "function-")


def _is_field(part: object) -> bool:
    if isinstance(part, int):
        return True
    return not (part in _UNION_MEMBERS or str(part).startswith(_VALIDATOR_KINDS) or "[" in str(part))


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """(message, param) for the first thing pydantic refused, ``param`` as a dotted path (``messages[0].content``)."""
    err = exc.errors()[0]
    loc = [p for p in err.get("loc", ()) if p != "body" and _is_field(p)]
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or None
    return (f"{param}: {err['msg']}" if param else err["msg"]), param


def _invalid(exc: RequestValidationError) -> APIError:
    message, param = validation_message(exc)
    return APIError(400, message, param=param)


def install_error_handlers(app: FastAPI, extra: dict[type, Callable[[Exception], APIError]] | None = None) -> None:
    """Every failure answers in OpenAI's shape; ``extra`` maps a server's own exceptions to an APIError."""
    def handle(kind: type, to_error: Callable[[Exception], APIError]) -> None:
        @app.exception_handler(kind)
        async def handler(_: Request, exc: Exception) -> JSONResponse:
            return to_error(exc).response()

    handle(APIError, lambda exc: exc)
    handle(BodyTooLarge, lambda exc: APIError(413, str(exc.detail), code="request_too_large"))
    handle(RequestValidationError, _invalid)
    handle(StropError, lambda exc: APIError(400, str(exc)))
    handle(StarletteHTTPException, lambda exc: APIError(exc.status_code, str(exc.detail)))
    for kind, to_error in (extra or {}).items():
        handle(kind, to_error)
