"""The access-log line (gateway/accesslog.py) is assembled by hand for speed; it must be exactly the JSON that
``json.dumps`` writes for the same fields, whatever a client or a token puts in them."""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import accesslog
from gateway.accesslog import AccessRecord, emit, format_line
from tests.gateway._fwd_servers import free_port, wait_live
from tests.gateway.conftest import PROOF_SECRET

ROOT = Path(__file__).resolve().parents[2]

NOW = datetime.datetime(2026, 11, 26, 15, 4, 5, 678901, tzinfo=datetime.UTC)


def reference(record: AccessRecord, latency_ms: float, now: datetime.datetime) -> str:
    fields: dict[str, object] = {
        "ts": now.isoformat(timespec="milliseconds"),
        "request_id": record.request_id,
        "method": record.method[:32],
        "route": record.route,
        "status": record.status,
        "latency_ms": round(latency_ms, 3),
        "user": record.user,
        "auth": record.auth,
    }
    if record.reason is not None:
        fields["reason"] = record.reason
    if record.error is not None:
        fields["error"] = record.error
    return json.dumps(fields, separators=(",", ":"))


@given(
    st.text(max_size=40),
    st.text(max_size=40),
    st.text(max_size=60),
    st.integers(0, 599),
    st.floats(0, 1e7, allow_nan=False),
    st.none() | st.text(max_size=40),
    st.sampled_from(["none", "public", "valid", "missing", "invalid", "forbidden", "unavailable"]),
    st.none() | st.text(max_size=20),
    st.none() | st.text(max_size=20),
)
def test_the_line_is_what_json_dumps_writes(request_id, method, route, status, latency, user, auth, reason, error):
    record = AccessRecord(request_id, method, route, status, user, auth, reason, error)
    assert format_line(record, latency, NOW) == reference(record, latency, NOW)


@pytest.mark.parametrize(
    "user",
    [
        pytest.param('"quoted" \\ back', id="quotes and backslash"),
        pytest.param("line\nbreak\r\t\x00", id="controls"),
        pytest.param("\u00e9\u5c71\U0001f600\ud800", id="non-ASCII and a lone surrogate"),
    ],
)
def test_hostile_values_stay_one_json_line(user):
    record = AccessRecord("r" * 32, "GET", "/api/{user_id}/{rest:path}", 200, user, "valid")
    line = format_line(record, 1.5)
    assert "\n" not in line
    assert json.loads(line)["user"] == user


def test_the_timestamp_is_utc_milliseconds_and_current():
    line = json.loads(format_line(AccessRecord("r", "GET", "x"), 0.0))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["ts"])
    stamp = datetime.datetime.fromisoformat(line["ts"])
    assert abs((datetime.datetime.now(datetime.UTC) - stamp).total_seconds()) < 2


def test_emit_goes_through_the_loggers_handlers_and_only_when_enabled(caplog):
    record = AccessRecord("r" * 32, "GET", "/x", 200)
    with caplog.at_level(logging.WARNING, logger="gateway.access"):
        emit(record, 1.0)
    assert not caplog.records
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        emit(record, 1.0)
    (logged,) = caplog.records
    assert logged.name == "gateway.access" and logged.levelno == logging.INFO
    assert json.loads(logged.getMessage())["request_id"] == "r" * 32
    assert accesslog.logger.name == "gateway.access"


class _CountingStream(io.StringIO):
    """Records each piece written and each flush (on the real stderr, a flush is one write system call)."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0
        self.pieces: list[str] = []

    def write(self, text: str) -> int:
        self.pieces.append(text)
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_the_cli_handler_buffers_lines_until_flushed() -> None:
    """A flush is a write system call on the real stream: one per request was a fifth of a request's CPU (issue 7)."""
    stream = _CountingStream()
    handler = accesslog.LineHandler(stream)
    accesslog.logger.addHandler(handler)
    try:
        for _ in range(3):
            handler.handle(logging.LogRecord("gateway.access", logging.INFO, __file__, 0, '{"a":1}', None, None))
        assert stream.getvalue() == "" and stream.flushes == 0
        accesslog.flush()
        assert stream.getvalue() == '{"a":1}\n' * 3 and stream.flushes == 1
    finally:
        accesslog.logger.removeHandler(handler)


def test_lines_are_written_whole_in_atomic_pipe_sized_pieces() -> None:
    """Workers share stderr: a write of at most PIPE_BUF bytes to a pipe is never split or interleaved (POSIX)."""
    stream = _CountingStream()
    handler = accesslog.LineHandler(stream)
    lines = [json.dumps({"n": n, "pad": "x" * (n % 300)}) for n in range(200)] + ["y" * (select.PIPE_BUF + 10)]
    lines += ["é" * 1500] * 4  # 3,000 bytes each: two never fit in one piece (counted in bytes, not characters)
    for line in lines:
        handler.write_line(line)
    handler.flush()
    assert stream.getvalue() == "".join(line + "\n" for line in lines)
    assert len(stream.pieces) > 10  # written as it gathered, not all at the end
    for piece in stream.pieces:
        assert piece.endswith("\n")
        # only a line too long for a piece goes alone
        assert len(piece.encode()) <= select.PIPE_BUF or piece.count("\n") == 1
    assert stream.flushes == len(stream.pieces)


def test_the_cli_writes_access_lines_within_a_second_and_all_of_them_at_shutdown(tmp_path) -> None:
    config = tmp_path / "gateway.toml"
    # Nothing listens on the upstream port: every request is a 502, logged like any other.
    upstream = f"http://127.0.0.1:{free_port()}"
    config.write_text(f'[[routes]]\npath = "/r/{{rest:path}}"\nupstream = "{upstream}"\nauth = "public"\n')
    port = free_port()
    env = {**os.environ, "EDGE_PROOF_SECRET": PROOF_SECRET}
    argv = [sys.executable, "-m", "gateway", "--config", str(config), "--port", str(port), "--graceful-timeout", "2"]
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: list[dict[str, object]] = []

    def read() -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            if raw.startswith(b"{"):
                lines.append(json.loads(raw))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_live(url, process)
        with httpx.Client(timeout=5, trust_env=False) as client:
            assert client.get(f"{url}/r/first").status_code == 502
            deadline = time.monotonic() + 3  # flushed by the app's one-second timer
            while not any(line.get("route") == "/r/{rest:path}" for line in lines) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert [line["status"] for line in lines if line.get("route") == "/r/{rest:path}"] == [502]
            for _ in range(5):
                assert client.get(f"{url}/r/more").status_code == 502
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(5)
    reader.join(5)
    process.stderr.close()
    assert [line["status"] for line in lines if line.get("route") == "/r/{rest:path}"] == [502] * 6


def _line_handler(formatter: logging.Formatter | None = None) -> tuple[accesslog.LineHandler, _CountingStream]:
    stream = _CountingStream()
    handler = accesslog.LineHandler(stream)
    handler.setFormatter(formatter or logging.Formatter("%(message)s"))
    return handler, stream


RECORD = AccessRecord(request_id="ab" * 16, method="GET", route="/r", status=200, user="u1", auth="valid")


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param(lambda handler: None, id="the CLI's setup: straight to the buffer"),
        pytest.param(lambda handler: accesslog.logger.addFilter(_Tag()), id="a logger filter"),
        pytest.param(lambda handler: handler.addFilter(_Tag()), id="a handler filter"),
        pytest.param(lambda handler: handler.setFormatter(logging.Formatter("access %(message)s")), id="a format"),
        pytest.param(lambda handler: handler.setLevel(logging.WARNING), id="a handler level above INFO"),
    ],
)
def test_the_direct_write_is_taken_only_where_it_changes_nothing(setup) -> None:
    handler, stream = _line_handler()
    accesslog.logger.addHandler(handler)
    level = accesslog.logger.level
    accesslog.logger.setLevel(logging.INFO)
    try:
        setup(handler)
        emit(RECORD, 1.5)
        handler.flush()
        line = format_line(RECORD, 1.5, NOW)
        written = stream.getvalue()
        if handler.level > logging.INFO:
            assert written == ""
        elif handler.formatter and handler.formatter._fmt != "%(message)s":
            assert re.fullmatch(r"access \{.*\}\n", written)
        else:
            tagged = bool(accesslog.logger.filters or handler.filters)
            assert json.loads(written)["request_id"] == RECORD.request_id
            assert len(written.splitlines()) == 1 and written.endswith("\n")
            assert _Tag.seen == tagged  # a filter saw a record only where one is configured
        assert json.loads(line)["request_id"] == RECORD.request_id
    finally:
        _Tag.seen = False
        accesslog.logger.removeHandler(handler)
        for existing in list(accesslog.logger.filters):
            accesslog.logger.removeFilter(existing)
        accesslog.logger.setLevel(level)


class _Tag(logging.Filter):
    seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        _Tag.seen = True
        return True


def test_the_clis_setup_makes_no_log_record(monkeypatch) -> None:
    handler, stream = _line_handler()
    accesslog.logger.addHandler(handler)
    level = accesslog.logger.level
    accesslog.logger.setLevel(logging.INFO)

    def no_record(record: logging.LogRecord) -> None:
        raise AssertionError("the plain setup went through Logger.handle")

    monkeypatch.setattr(accesslog.logger, "handle", no_record)
    try:
        emit(RECORD, 1.5)
        assert stream.getvalue() == ""
        handler.flush()
        assert json.loads(stream.getvalue())["status"] == 200 and stream.flushes == 1
    finally:
        accesslog.logger.removeHandler(handler)
        accesslog.logger.setLevel(level)
