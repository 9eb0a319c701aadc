"""Every error the tasks backend answers with, and the one place they become HTTP responses.

    TasksError                 500 internal_error
    ├── MalformedRequest       400 malformed_request   (bad JSON, bad Content-Length)
    ├── Unauthenticated        401 unauthenticated     (a valid proof, but for an anonymous request)
    ├── Forbidden              403 forbidden           (the path names another user than the proven one)
    ├── NotFound               404 not_found           (unknown route, unknown task or another user's task)
    ├── MethodNotAllowed       405 method_not_allowed
    ├── PreconditionFailed     412 precondition_failed (If-Match names a version that is not current)
    ├── ContentTooLarge        413 content_too_large
    ├── UnsupportedMediaType   415 unsupported_media_type
    ├── ValidationFailed       422 validation_error    (``fields`` names each bad field)
    └── Unavailable            503 unavailable         (the database cannot be reached)

Requests without a valid gateway proof never reach this tree: ``gateway.proof.ProofMiddleware`` answers
them with 401 ``{"error": "unauthenticated", "reason": ...}``, the same shape :class:`Unauthenticated` uses.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

logger = logging.getLogger("tasks_backend")


class TasksError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str = "internal error", *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        return {"error": self.code, "message": self.message}


class MalformedRequest(TasksError):
    status, code = 400, "malformed_request"


class Unauthenticated(TasksError):
    status, code = 401, "unauthenticated"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def body(self) -> dict[str, object]:
        return {"error": self.code, "reason": self.reason, "message": self.message}


class Forbidden(TasksError):
    status, code = 403, "forbidden"


class NotFound(TasksError):
    status, code = 404, "not_found"


class MethodNotAllowed(TasksError):
    status, code = 405, "method_not_allowed"


class PreconditionFailed(TasksError):
    status, code = 412, "precondition_failed"


class ContentTooLarge(TasksError):
    status, code = 413, "content_too_large"


class UnsupportedMediaType(TasksError):
    status, code = 415, "unsupported_media_type"


class ValidationFailed(TasksError):
    status, code = 422, "validation_error"

    def __init__(self, fields: Mapping[str, str], message: str = "the request has invalid fields") -> None:
        super().__init__(message)
        self.fields = dict(fields)

    def body(self) -> dict[str, object]:
        return {"error": self.code, "message": self.message, "fields": self.fields}


class Unavailable(TasksError):
    status, code = 503, "unavailable"


#: Failures that mean "the database cannot be reached right now". SQLAlchemy wraps errors raised while a
#: statement runs, but not those raised while asyncpg opens a connection (refused, "the database system is
#: starting up", too many clients), which arrive as the driver's own exceptions or as OSError.
_UNAVAILABLE: tuple[type[Exception], ...] = (
    OperationalError,
    DisconnectionError,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)
#: The same, as SQLSTATE classes (PostgreSQL Appendix A) for driver errors SQLAlchemy wraps in a plain DBAPIError:
#: 08 connection exception, 53 insufficient resources (too many clients), 57 operator intervention (shutting
#: down, or "the database system is not yet accepting connections" while it starts again: issue 8 saw a 500).
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")


def _unavailable(exc: Exception) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
    return exc.connection_invalidated or sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES


def error_response(error: TasksError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _translate(exc: Exception) -> TasksError:
    """Map a foreign exception onto the tree; anything unrecognised is a 500 that says nothing more."""
    if isinstance(exc, TasksError):
        return exc
    if isinstance(exc, HTTPException):  # Starlette's router: unknown route, wrong method.
        if exc.status_code == 405:
            return MethodNotAllowed("method not allowed on this resource", headers=exc.headers)
        if exc.status_code == 404:
            return NotFound("no such resource")
        error = TasksError(exc.detail, headers=exc.headers)
        error.status = exc.status_code
        return error
    # A dropped connection (database restarted, network cut) is worth a retry; pool_pre_ping recovers the
    # pool on the next checkout, so tell the client to come back instead of calling it a bug.
    if _unavailable(exc):
        return Unavailable("the database is unavailable; retry shortly", headers={"retry-after": "1"})
    return TasksError()


async def handle_error(request: Request, exc: Exception) -> Response:
    error = _translate(exc)
    if isinstance(error, Unavailable):
        # An outage, not a bug: one line per request instead of a traceback each (issue 8's PostgreSQL restart).
        logger.warning("database unavailable: %s %s: %s", request.method, request.url.path, exc)
    elif error.status >= 500:
        logger.error("request failed: %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(error)


#: Starlette's ``exception_handlers``: looked up along the MRO, so these cover the whole tree.
#: ``Exception`` is served by Starlette's ServerErrorMiddleware (which logs and re-raises to the server);
#: the others by ExceptionMiddleware, so a database outage is a clean 503 and not a crash report.
EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    Exception: handle_error,
    HTTPException: handle_error,
    TasksError: handle_error,
    DBAPIError: handle_error,
    **dict.fromkeys(_UNAVAILABLE, handle_error),
}
