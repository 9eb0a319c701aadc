"""A bare ASGI app answering the upstream's constant body: the floor of a Python (uvicorn) server on this
machine, with no token check and no upstream hop. A calibration line in the warm scenario, not a proxy."""

from __future__ import annotations

from typing import Any

from bench.configs import UPSTREAM_BODY

BODY = UPSTREAM_BODY.encode()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
