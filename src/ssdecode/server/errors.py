"""Every error the API returns, in OpenAI's JSON shape ``{"error": {message, type, param, code}}``.

FastAPI answers bad bodies with 422 and its own shape; OpenAI clients expect 400 and this one, so
the validation handler is replaced, and engine refusals (bad parameters, context overflow, queue
full, shutdown) map to their status codes here, in one table. Each refusal is counted in the
server's metrics under its status code.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ssdecode.kv.cache import ContextOverflow
from ssdecode.params import InvalidParams
from ssdecode.server.engine_loop import EngineStopped, QueueFull
from ssdecode.server.metrics import ServerMetrics

log = logging.getLogger(__name__)

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
               405: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
               503: "service_unavailable"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def as_api_error(exc: Exception) -> APIError:
    """The API error for an exception raised while handling a call."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, (InvalidParams, ContextOverflow)):
        return APIError(400, str(exc))
    if isinstance(exc, QueueFull):
        return APIError(429, str(exc), code="queue_full")
    if isinstance(exc, EngineStopped):
        return APIError(503, str(exc), code="engine_stopped")
    if isinstance(exc, RequestValidationError):
        return _validation_error(exc)
    if isinstance(exc, HTTPException):
        return APIError(exc.status_code, str(exc.detail))
    log.error("unhandled error", exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}")


def _validation_error(exc: RequestValidationError) -> APIError:
    problems, param = [], None
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if err.get("type") == "json_invalid":
            problems.append(f"the body is not valid JSON ({err.get('ctx', {}).get('error', err['msg'])})")
            continue
        param = param or (".".join(loc) or None)
        problems.append(f"{'.'.join(loc) or 'body'}: {err['msg']}")
    return APIError(400, "; ".join(problems) or "invalid request", param=param)


def install_error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        err = as_api_error(exc)
        metrics.request_refused(err.status)
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return JSONResponse(error_body(err.status, err.message, err.param, err.code), err.status,
                            headers=headers)

    for exc_type in (APIError, InvalidParams, ContextOverflow, QueueFull, EngineStopped,
                     RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(exc_type, handle)
