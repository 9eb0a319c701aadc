"""One error tree for the identity service, turned into HTTP in one place (:func:`error_response`).

    IdentityError                      {"message", "code"} with a status (reference 2.4)
     +-- Unauthorized                  401 UNAUTHORIZED (no valid session)
     +-- RateLimited                   429, body without "code" and a Retry-After header (reference 2.4/2.10)
     +-- RouteNotFound                 404 with an empty body: unknown path or wrong method (reference 2.1)
     +-- Unavailable                   503 SERVICE_UNAVAILABLE + Retry-After (the database cannot be reached)

Each error may carry extra response headers (``Set-Cookie`` clearing a dead session cookie), kept as a list of
pairs because ``Set-Cookie`` repeats.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from identity.db import unavailable

logger = logging.getLogger("identity")


class IdentityError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = list(headers or [])

    def body(self) -> dict[str, str]:
        return {"message": self.message, "code": self.code}


class Unauthorized(IdentityError):
    def __init__(self, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(401, "UNAUTHORIZED", "Unauthorized", headers)


class RateLimited(IdentityError):
    def __init__(self, retry_after: int) -> None:
        super().__init__(429, "TOO_MANY_REQUESTS", "Too many requests. Please try again later.")
        # RFC 9110 15.5.29 / 10.2.3: Retry-After in delta-seconds; X-Retry-After is what Better Auth sends.
        self.headers = [("retry-after", str(retry_after)), ("x-retry-after", str(retry_after))]

    def body(self) -> dict[str, str]:
        return {"message": self.message}


class RouteNotFound(IdentityError):
    def __init__(self) -> None:
        super().__init__(404, "NOT_FOUND", "")


class Unavailable(IdentityError):
    def __init__(self) -> None:
        super().__init__(503, "SERVICE_UNAVAILABLE", "Service temporarily unavailable. Please try again later.")
        self.headers = [("retry-after", "1")]  # RFC 9110 10.2.3; pool_pre_ping reconnects on the next checkout


def bad_request(code: str, message: str) -> IdentityError:
    return IdentityError(400, code, message)


def validation_error(messages: list[str]) -> IdentityError:
    return IdentityError(400, "VALIDATION_ERROR", "; ".join(messages))


def forbidden(code: str, message: str) -> IdentityError:
    return IdentityError(403, code, message)


def error_response(error: IdentityError) -> Response:
    response: Response
    if isinstance(error, RouteNotFound):
        # Better Auth answers route misses with an empty body and no content-type (reference 2.1).
        response = Response(status_code=404)
    else:
        response = JSONResponse(error.body(), status_code=error.status)
    for name, value in error.headers:
        response.headers.append(name, value)
    return response


async def handle_identity_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, IdentityError)
    return error_response(exc)


async def handle_database_error(request: Request, exc: Exception) -> Response:
    """A database outage is a 503 the client may retry; any other database error stays a 500 (re-raised to
    Starlette's ServerErrorMiddleware, which logs it)."""
    if unavailable(exc):
        logger.warning("database unavailable: %s %s: %s", request.method, request.url.path, exc)
        return error_response(Unavailable())
    raise exc


async def handle_route_miss(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 both become Better Auth's empty 404."""
    return error_response(RouteNotFound())
