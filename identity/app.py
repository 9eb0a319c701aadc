"""The identity ASGI application.

``create_app(config, ...)`` takes its dependencies as arguments: tests pass an engine, a clock and a fast
password hasher. Page handlers (``identity/pages.py``) find the request's session with
``await request.app.state.current_session(request)`` -> ``SessionInfo | None``.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from argon2 import PasswordHasher
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.types import ASGIApp, ExceptionHandler, Receive, Scope, Send

from identity.accesslog import AccessLog
from identity.config import Config, load_config
from identity.db import UNAVAILABLE, create_engine, head_revision, schema_is_current
from identity.endpoints import AuthEndpoints, Jwks
from identity.errors import IdentityError, handle_database_error, handle_identity_error, handle_route_miss
from identity.keyring import KeyRing
from identity.pages import page_routes
from identity.passwords import Passwords, strong_hasher
from identity.service import Service
from identity.session_endpoints import SessionEndpoints
from identity.store import Store

Endpoint = Callable[[Request], Awaitable[Response]] | ASGIApp
JWKS_PATH = "/api/auth/jwks"


def _route(path: str, endpoint: Endpoint, method: str) -> Route:
    route = Route(path, endpoint, methods=[method])
    # Starlette adds HEAD to every GET route; Better Auth answers HEAD with its empty 404 (reference 2.1).
    route.methods = {method}
    return route


def auth_routes(service: Service) -> list[BaseRoute]:
    auth = AuthEndpoints(service)
    manage = SessionEndpoints(service)
    return [
        _route("/sign-up/email", auth.sign_up, "POST"),
        _route("/sign-in/email", auth.sign_in, "POST"),
        _route("/sign-out", auth.sign_out, "POST"),
        _route("/get-session", auth.get_session, "GET"),
        _route("/get-session", auth.get_session, "POST"),  # answers 405 as Better Auth does
        _route("/token", auth.token, "GET"),
        _route("/jwks", Jwks(service.keyring), "GET"),
        _route("/ok", auth.ok, "GET"),
        _route("/list-sessions", manage.list_sessions, "GET"),
        _route("/revoke-session", manage.revoke_session, "POST"),
        _route("/revoke-sessions", manage.revoke_sessions, "POST"),
        _route("/revoke-other-sessions", manage.revoke_other_sessions, "POST"),
        _route("/change-password", manage.change_password, "POST"),
        _route("/revocations", manage.revocations, "GET"),
    ]


class JwksFirst:
    """``GET /api/auth/jwks``, the endpoint every verifier polls, sent straight to its endpoint past the router
    (issue 7). It sits inside the access log, so the line is still written, and the endpoint keeps the app's
    exception handlers (a database outage is still a 503). Any other method or path, or a ``root_path``, takes
    the normal route (HEAD and POST there get Better Auth's empty 404)."""

    def __init__(self, app: ASGIApp, jwks: ASGIApp) -> None:
        self.app = app
        self.jwks = jwks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == JWKS_PATH
            and scope["method"] == "GET"
            and not scope.get("root_path")
        ):
            await self.jwks(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_app(
    config: Config,
    *,
    engine: AsyncEngine | None = None,
    clock: Callable[[], float] | None = None,
    password_hasher: PasswordHasher | None = None,
) -> Starlette:
    owns_engine = engine is None
    db = engine if engine is not None else create_engine(config.database_url)
    now = clock or time.time
    service = Service(
        config,
        Store(db, now, config.jwt_ttl, session_cache_ms=config.session_cache_ms),
        KeyRing(db, config, now),
        Passwords(password_hasher or strong_hasher(), config.hash_concurrency, config.hash_nice),
        now,
    )
    head = head_revision()

    async def livez(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            ready = await schema_is_current(db, head)
        except (SQLAlchemyError, OSError):
            ready = False
        return JSONResponse({"status": "ok" if ready else "unavailable"}, status_code=200 if ready else 503)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Create (or load) the signing key at start-up, so the first /token is not the one that pays for it.
        await service.keyring.ensure()
        try:
            yield
        finally:
            service.passwords.close()
            if owns_engine:
                await db.dispose()

    routes: list[BaseRoute] = [
        _route("/livez", livez, "GET"),
        _route("/readyz", readyz, "GET"),
        # No trailing-slash redirects: Better Auth answers a path it does not know with its empty 404.
        Mount("/api/auth", app=Router(auth_routes(service), redirect_slashes=False)),
    ]
    routes.extend(page_routes())  # the web pages (issue 6): /, /signup, /login, /tasks, /assets/*
    handlers: dict[int | type[Exception], ExceptionHandler] = {
        IdentityError: handle_identity_error,
        404: handle_route_miss,
        405: handle_route_miss,
        SQLAlchemyError: handle_database_error,  # looked up along the MRO: DBAPIError and the rest
        **dict.fromkeys(UNAVAILABLE, handle_database_error),
    }
    jwks = ExceptionMiddleware(Jwks(service.keyring), handlers=handlers)
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(AccessLog), Middleware(JwksFirst, jwks=jwks)],
        exception_handlers=handlers,
    )
    app.router.redirect_slashes = False
    app.state.identity = service
    app.state.current_session = service.current_session
    return app


def create_app_from_env() -> Starlette:
    """uvicorn factory (``identity.app:create_app_from_env``), used by ``serve --workers N``."""
    return create_app(load_config(os.environ))
