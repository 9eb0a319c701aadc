"""One JSON line per request on the ``tasks_backend.access`` logger (stderr when served).

Fields: ``ts`` (UTC, RFC 3339), ``request_id`` (the gateway's, so a line joins the gateway's line for the same
request), ``method``, ``path`` (without the query: a cursor or filter is not worth logging), ``status``,
``latency_ms`` and ``user`` (the proven user id, or null). Nothing from the body or the headers is logged.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.proof import Identity

logger = logging.getLogger("tasks_backend.access")


def format_line(scope: Scope, status: int, latency_ms: float, now: dt.datetime) -> str:
    identity: Any = scope.get("state", {}).get("identity")
    proven = identity if isinstance(identity, Identity) else None
    return json.dumps(
        {
            "ts": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "request_id": proven.request_id if proven else None,
            "method": scope["method"][:32],  # any token is a method to h11: bound what a client writes here
            "path": scope["path"][:512],
            "status": status,
            "latency_ms": round(latency_ms, 3),
            "user": proven.user_id if proven else None,
        },
        separators=(",", ":"),
    )


class AccessLog:
    """Outermost ASGI middleware: sees every response, including the proof middleware's 401s."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before responding, the server answers 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            latency = (time.perf_counter() - start) * 1000
            logger.info(format_line(scope, status, latency, dt.datetime.now(dt.UTC)))
