"""One JSON line per request on the ``gateway.access`` logger (issue 4, "Operations").

Fields: ``ts`` (UTC, RFC 3339), ``request_id``, ``method``, ``route`` (the route template, never the raw path,
which may carry identifiers or a query with secrets), ``status``, ``latency_ms``, ``user`` (the verified
``sub`` or null), ``auth`` (see :data:`AuthOutcome`), ``reason`` (the ``invalid_token`` reason, when there is
one) and ``error`` (the gateway's error code, when it refused or failed). The record has no field that could
hold a token or an ``Authorization`` value, so none can be logged by mistake.

The CLI writes the lines through :class:`LineHandler`: gathered and written some twenty at a time (4 KiB, one
atomic pipe write), and by the gateway's once-a-second timer (:func:`flush`, gateway/app.py), at shutdown and at
exit, instead of a ``write`` system call per request (issue 7). A crash loses at most a second of lines.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import select
import sys
import time
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _quote  # what json.dumps uses for str (ensure_ascii)
from typing import Literal, TextIO

logger = logging.getLogger("gateway.access")

#: ``none``: no access decision was made (health, unmatched or unsafe path); ``public``: a public route;
#: ``valid``: a verified token; ``missing``/``invalid``: 401; ``forbidden``: 403; ``unavailable``: no keys (503).
AuthOutcome = Literal["none", "public", "valid", "missing", "invalid", "forbidden", "unavailable"]


@dataclass(slots=True)  # one per request: slots make it cheaper to build and fill (issue 7)
class AccessRecord:
    """Filled in as the request goes through the pipeline, emitted once at the end."""

    request_id: str
    method: str
    route: str
    status: int = 0
    user: str | None = None
    auth: AuthOutcome = "none"
    reason: str | None = None
    error: str | None = None


def format_line(record: AccessRecord, latency_ms: float, now: datetime.datetime | None = None) -> str:
    """The JSON line, exactly as ``json.dumps(fields, separators=(",", ":"))`` would write it (test_accesslog.py
    holds it to that), assembled from pre-quoted parts: it is written for every request (issue 7)."""
    line = [
        '{"ts":"',
        _now() if now is None else now.isoformat(timespec="milliseconds"),
        '","request_id":',
        _quote(record.request_id),
        ',"method":',
        _quote(record.method[:32]),  # any token is a method to h11: bound what a client writes into the log
        ',"route":',
        _quote(record.route),
        ',"status":',
        str(record.status),
        ',"latency_ms":',
        repr(round(latency_ms, 3)),
        ',"user":',
        "null" if record.user is None else _quote(record.user),
        ',"auth":',
        _quote(record.auth),
    ]
    if record.reason is not None:
        line += ',"reason":', _quote(record.reason)
    if record.error is not None:
        line += ',"error":', _quote(record.error)
    line.append("}")
    return "".join(line)


_second: tuple[int, str] = (-1, "")


def _now() -> str:
    """UTC now as ``datetime.isoformat(timespec="milliseconds")`` writes it; the seconds formatted once a second."""
    global _second
    now = time.time()
    second = int(now)
    if _second[0] != second:
        _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second[1]}.{int((now - second) * 1000):03d}+00:00"


def emit(record: AccessRecord, latency_ms: float) -> None:
    if logger.isEnabledFor(logging.INFO):
        line = format_line(record, latency_ms)
        handlers = logger.handlers
        if len(handlers) == 1 and not logger.filters and isinstance(handlers[0], LineHandler) and handlers[0].plain:
            # The CLI's own setup: the line is the whole output, so it goes straight to the buffer. A LogRecord and
            # the handler's lock and formatting cost more than the line itself (~4 µs of ~6, issue 7).
            handlers[0].write_line(line)
            return
        # Anything else configured: a record made directly and handed to the logger's handlers (Logger.info would
        # also walk the stack to find its caller, which no access line shows); their filters and levels apply.
        logger.handle(logging.LogRecord(logger.name, logging.INFO, __file__, 0, line, None, None))


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A ``StreamHandler`` that gathers whole lines and writes them in pieces of at most ``PIPE_BUF`` bytes when
    that much has gathered and when :func:`flush` is called (module docstring). POSIX makes a write of up to
    ``PIPE_BUF`` bytes to a pipe atomic, so the lines of ``--workers`` processes sharing one stderr pipe never cut
    into each other (one longer line is written alone)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self._lines: list[str] = []
        self._size = 0

    @property
    def plain(self) -> bool:
        """Whether a line may skip the handler's machinery: no filters, INFO passes, and the format is the bare
        message (the CLI's ``%(message)s``)."""
        formatter = self.formatter
        bare = formatter is None or formatter._fmt == "%(message)s"
        return bare and not self.filters and self.level <= logging.INFO

    def write_line(self, line: str) -> None:
        line += self.terminator
        self._lines.append(line)
        self._size += _encoded_size(line)
        if self._size >= select.PIPE_BUF:
            self._write_out()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock or contextlib.nullcontext():
            self._write_out()

    def _write_out(self) -> None:
        lines, self._lines, self._size = self._lines, [], 0
        piece: list[str] = []
        size = 0
        try:
            for line in lines:
                length = _encoded_size(line)
                if piece and size + length > select.PIPE_BUF:
                    self._write("".join(piece))
                    piece, size = [], 0
                piece.append(line)
                size += length
            if piece:
                self._write("".join(piece))
        except Exception:  # as logging does: a broken stream must not fail the request
            self.handleError(logging.LogRecord(logger.name, logging.INFO, __file__, 0, "".join(lines), None, None))

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()  # one write system call per piece


def _encoded_size(line: str) -> int:
    """Bytes once written (the stream is UTF-8): the access line is ASCII (JSON with ensure_ascii), so its length;
    a line formatted otherwise (an operator's own formatter) may not be."""
    return len(line) if line.isascii() else len(line.encode("utf-8", "replace"))


def flush() -> None:
    """Write out the access lines buffered so far (the app's timer calls this every second, and at shutdown)."""
    for handler in logger.handlers:
        handler.flush()
