"""How ``python -m identity serve`` runs uvicorn: logging that reaches every worker, and one ``send`` per response.

* **Logging** is a ``dictConfig`` handed to uvicorn (``log_config``), which applies it in each worker process:
  ``logging.basicConfig`` in the parent reached no worker under ``--workers N`` (spawned processes start with a bare
  root logger), so the access log was silently off there. The access lines go through
  :class:`BufferedLineHandler`: block-buffered, flushed at least every :data:`FLUSH_INTERVAL` seconds and at exit,
  instead of a ``write`` system call per request (issue 7: about 8 µs of the ~68 µs a ``GET /jwks`` cost).
* **Writes**: uvicorn writes a response's head when the app sends ``http.response.start`` and its body with the
  next message: two ``send`` system calls for every answer. :class:`CoalescingHttpToolsProtocol` joins the writes
  made in one event-loop iteration into one (the gateway does the same, gateway/coalescing.py; the packages do not
  import each other, STYLE.md). Measured on ``GET /jwks`` under ``wrk -c10``: 67 -> 56 µs of server CPU per request.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import sys
import threading
from typing import Any, TextIO, cast

from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

FLUSH_INTERVAL = 0.5
HTTP_PROTOCOL = "identity.server:CoalescingHttpToolsProtocol"


class BufferedLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A ``StreamHandler`` on a block-buffered copy of stderr that does not flush after every record: a daemon
    thread flushes every :data:`FLUSH_INTERVAL` seconds (under the handler's lock, as ``flush`` always is), and
    ``logging.shutdown`` at exit flushes the rest. A crash can lose at most that interval's lines."""

    def __init__(self, stream: TextIO | None = None, interval: float = FLUSH_INTERVAL) -> None:
        if stream is None:
            stream = open(sys.stderr.fileno(), "w", buffering=64 * 1024, encoding="utf-8", closefd=False)  # noqa: SIM115
        super().__init__(stream)
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_every, args=(interval,), name="log-flush", daemon=True)
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)

    def _flush_every(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._flusher.join(timeout=1.0)  # it wakes at once: the event is set
        self.flush()
        super().close()


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging setup plus identity's loggers: ``identity.access`` (one JSON line per request) through
    :class:`BufferedLineHandler`, every other ``identity`` logger as plain lines on stderr."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["message"] = {"format": "%(message)s"}
    config["handlers"]["identity_access"] = {"()": BufferedLineHandler, "formatter": "message"}
    config["handlers"]["identity"] = {
        "class": "logging.StreamHandler",
        "formatter": "message",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["identity.access"] = {"handlers": ["identity_access"], "level": "INFO", "propagate": False}
    config["loggers"]["identity"] = {"handlers": ["identity"], "level": level.upper(), "propagate": False}
    return config


class _Coalescing:
    """The connection's transport, with the writes of one loop iteration sent in one piece from a callback at its
    end; everything else is the real transport's (closing flushes first, aborting drops what is pending)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            if not self._pending:
                self._loop.call_soon(self.flush)
            self._pending.append(bytes(data))

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(b"".join(pending))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # is_closing, pause_reading, get_extra_info, ...
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through :class:`_Coalescing`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        coalescing = _Coalescing(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(cast(asyncio.Transport, coalescing))
