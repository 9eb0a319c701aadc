"""``create_app``: the tasks backend as an ASGI application, with its dependencies passed in."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, Router

from tasks_backend import trust
from tasks_backend.accesslog import AccessLog
from tasks_backend.config import Config
from tasks_backend.db import create_engine, head_revision, schema_revision
from tasks_backend.endpoints import TaskEndpoints
from tasks_backend.errors import EXCEPTION_HANDLERS, logger
from tasks_backend.store import TaskStore


def create_app(
    config: Config,
    *,
    engine: AsyncEngine | None = None,
    clock: Callable[[], float] | None = None,
) -> Starlette:
    """``engine``: created from ``config.database_url`` (and disposed on shutdown) when not given.
    ``clock``: Unix seconds, for proof expiry and task timestamps (tests pass a fake one)."""
    clock = clock or time.time
    owns_engine = engine is None
    db = engine or create_engine(config.database_url)
    expected_revision = head_revision()
    endpoints = TaskEndpoints(TaskStore(db, clock), config)

    async def livez(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        try:
            revision = await schema_revision(db)
        except Exception:  # any failure to reach or read the database means "not ready"
            logger.warning("readyz: database unreachable or not migrated", exc_info=True)
            return JSONResponse({"status": "unavailable", "reason": "database unreachable or not migrated"}, 503)
        if revision != expected_revision:
            return JSONResponse({"status": "unavailable", "reason": "schema not at the newest migration"}, 503)
        return JSONResponse({"status": "ok"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if owns_engine:
            await db.dispose()

    app = Starlette(
        routes=[
            Route("/livez", livez, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Mount(
                "/api/{user_id}",
                app=Router(endpoints.routes(), redirect_slashes=False),
                middleware=[Middleware(trust.RequireOwner)],
            ),
        ],
        middleware=[Middleware(AccessLog), trust.proof_middleware(config, clock)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    # A slash redirect would be built from the Host header and answered before the owner check; a wrong
    # path is a plain 404 instead.
    app.router.redirect_slashes = False
    return app
