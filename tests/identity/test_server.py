"""identity/server.py: coalesced writes, the buffered access-log handler, and logging under ``--workers``."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from identity.server import BufferedLineHandler, _Coalescing, log_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the transport wrapper is exercised on the running loop; uvloop gets the same calls


class _Recorder:
    """A transport that records what reaches it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.events.append("write")

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.events.append("close")
        self.closing = True

    def abort(self) -> None:
        self.events.append("abort")
        self.closing = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


async def _coalescing() -> tuple[_Coalescing, _Recorder]:
    recorder = _Recorder()
    return _Coalescing(recorder, asyncio.get_running_loop()), recorder  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_writes_of_one_iteration_leave_in_one_piece() -> None:
    transport, recorder = await _coalescing()
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"")
    transport.write(b"ok")
    assert recorder.writes == [] and transport.get_write_buffer_size() == 40
    await asyncio.sleep(0)
    assert recorder.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    transport.write(b"next")
    await asyncio.sleep(0)
    assert recorder.writes[1:] == [b"next"]


@pytest.mark.anyio
async def test_close_flushes_first_and_abort_drops() -> None:
    transport, recorder = await _coalescing()
    transport.write(b"last words")
    transport.close()
    assert recorder.events == ["write", "close"] and recorder.writes == [b"last words"]
    transport, recorder = await _coalescing()
    transport.write(b"never sent")
    transport.abort()
    await asyncio.sleep(0)
    assert recorder.events == ["abort"]


@pytest.mark.anyio
async def test_everything_else_is_the_real_transports() -> None:
    transport, recorder = await _coalescing()
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)
    recorder.closing = True
    assert transport.is_closing()
    transport.write(b"after close")
    await asyncio.sleep(0)
    assert recorder.writes == []  # nothing is written to a closing transport


def test_the_buffered_handler_writes_lines_without_a_flush_per_record_and_flushes_on_its_own() -> None:
    written: list[str] = []

    class Stream(io.StringIO):
        def flush(self) -> None:
            written.append(self.getvalue())

    stream = Stream()
    handler = BufferedLineHandler(stream, interval=0.05)
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        handler.handle(logging.LogRecord("identity.access", logging.INFO, __file__, 0, "one", None, None))
        handler.handle(logging.LogRecord("identity.access", logging.INFO, __file__, 0, "two", None, None))
        assert stream.getvalue() == "one\ntwo\n"
        deadline = time.monotonic() + 5
        while not written and time.monotonic() < deadline:
            time.sleep(0.01)
        assert written and written[-1] == "one\ntwo\n"  # the flusher thread ran without any further record
    finally:
        handler.close()
    assert not handler._flusher.is_alive()  # close() stopped the flusher thread


def test_log_config_routes_the_access_log_to_the_buffered_handler() -> None:
    config = log_config("warning")
    assert config["loggers"]["identity.access"] == {
        "handlers": ["identity_access"],
        "level": "INFO",  # the access log does not depend on uvicorn's --log-level
        "propagate": False,
    }
    assert config["handlers"]["identity_access"]["()"] is BufferedLineHandler
    assert config["loggers"]["identity"]["level"] == "WARNING"
    assert "uvicorn.error" in config["loggers"]  # uvicorn's own setup is kept


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_writes_the_access_log_with_any_number_of_workers(tmp_path: Path, workers: str) -> None:
    """basicConfig in the parent never reached spawned workers: with --workers 2 no access line was written."""
    port = _free_port()
    env = {
        **os.environ,
        "IDENTITY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/identity.db",
        "IDENTITY_SECRET": "abcdefghijklmnopqrstuvwxyz0123456789ABCD",
        "IDENTITY_BASE_URL": f"http://127.0.0.1:{port}",
    }
    log = tmp_path / "stderr.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "identity", "serve", "--migrate", "--port", str(port), "--workers", workers],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=out,
        )
        try:
            deadline = time.monotonic() + 60
            while b"/api/auth/jwks" not in log.read_bytes():
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                        sock.sendall(b"GET /api/auth/jwks HTTP/1.1\r\nhost: identity\r\nconnection: close\r\n\r\n")
                        answer = b""
                        while chunk := sock.recv(65536):
                            answer += chunk
                    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
                    assert b'"keys"' in answer  # head and body arrived (written as one piece)
                except OSError:
                    pass
                time.sleep(0.2)  # within the handler's flush interval the line reaches the file
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(30)
    assert '"path":"/api/auth/jwks","status":200' in log.read_text()
