"""One JSON line per request on the ``identity.access`` logger: never a header, body, query or token.

The query string is left out on purpose: it is the one part of a URL that may carry secrets.
"""

from __future__ import annotations

import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("identity.access")


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            client = scope.get("client")
            ms = round((time.perf_counter() - started) * 1000, 2)
            peer = _quote(client[0]) if client else "null"
            method, path = _quote(scope["method"]), _quote(scope["path"])
            line = f'{{"method":{method},"path":{path},"status":{status},"ms":{ms},"peer":{peer}}}'
            # The record built directly: Logger.info would also walk the stack for a caller nobody reads.
            logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, line, (), None))


def _quote(text: str) -> str:
    """A JSON string; json.dumps only when something needs escaping (most paths need none)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)
