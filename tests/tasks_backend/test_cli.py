"""``python -m tasks_backend``: help, migrate, configuration errors, and serving on loopback."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.tasks_backend.proofs import SECRET, proof_headers

ROOT = Path(__file__).resolve().parents[2]
ENV_VARS = (
    "TASKS_DATABASE_URL",
    "EDGE_PROOF_SECRET",
    "TASKS_PROOF_MAX_AGE",
    "TASKS_MAX_BODY_BYTES",
    "TASKS_MAX_PAGE_SIZE",
)


def run(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TASKS_", "EDGE_PROOF"))}
    return subprocess.run(
        [sys.executable, "-m", "tasks_backend", *args],
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"], ["migrate", "--help"]])
def test_help_names_every_environment_variable(args):
    result = run(*args)
    assert result.returncode == 0, result.stderr
    for name in ENV_VARS:
        assert name in result.stdout


def test_serve_help_explains_every_flag():
    out = run("serve", "--help").stdout
    for flag in ("--host", "--port", "--log-level"):
        assert flag in out


def test_migrate_creates_the_schema_relative_to_the_working_directory(tmp_path):
    first = run("migrate", env={"TASKS_DATABASE_URL": "sqlite:///data/tasks.db"}, cwd=tmp_path)
    second = run("migrate", env={"TASKS_DATABASE_URL": "sqlite:///data/tasks.db"}, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "data" / "tasks.db").stat().st_size > 0


def test_serve_reports_every_configuration_problem_and_exits_2():
    result = run("--port", "1", env={"TASKS_MAX_PAGE_SIZE": "0"})
    assert result.returncode == 2
    assert "EDGE_PROOF_SECRET is not set" in result.stderr
    assert "TASKS_MAX_PAGE_SIZE" in result.stderr


def test_migrate_reports_a_bad_database_url():
    result = run("migrate", env={"TASKS_DATABASE_URL": "mysql://h/db"})
    assert result.returncode == 2
    assert "unsupported database URL scheme" in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def signed(method: str, target: str) -> dict[str, str]:
    request = httpx.Request(method, f"http://tasks{target}")
    return proof_headers(request, user_id="alice", timestamp=int(time.time()))


def oversized_upload(port: int) -> tuple[int, bytes]:
    """Stream 1 KiB chunks until the server answers (at most 4 MiB); return bytes sent and the response."""
    head = {"host": "tasks", "content-type": "application/json", "transfer-encoding": "chunked"}
    head |= signed("POST", "/api/alice/tasks")
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        lines = "".join(f"{name}: {value}\r\n" for name, value in head.items())
        sock.sendall(f"POST /api/alice/tasks HTTP/1.1\r\n{lines}\r\n".encode())
        for _ in range(4096):
            try:
                sock.sendall(b"400\r\n" + b"x" * 1024 + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1024
            if select.select([sock], [], [], 0.005)[0]:
                break
        return sent, sock.recv(65536)


@pytest.mark.integration
def test_serves_on_loopback_without_a_subcommand(tmp_path):
    """The real server: `--host/--port` with no subcommand serves; a streamed oversized body is cut off."""
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    env = {"TASKS_DATABASE_URL": url, "EDGE_PROOF_SECRET": SECRET.decode()}
    assert run("migrate", env=env).returncode == 0
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TASKS_", "EDGE_PROOF"))}
    log = tmp_path / "server.log"
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "tasks_backend", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env={**clean, "PYTHONPATH": str(ROOT), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False) as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    ready = client.get("/readyz")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the server did not start"
                    assert process.poll() is None, log.read_text()
                    time.sleep(0.1)
            assert ready.status_code == 200
            assert ready.json() == {"status": "ok"}
            assert "server" not in ready.headers
            assert "date" in ready.headers
            # A client that bypasses the gateway and claims an identity gets nothing.
            bypass = client.get("/api/alice/tasks", headers={"X-User-Id": "alice"})
            assert bypass.status_code == 401

            created = client.post(
                "/api/alice/tasks", json={"title": "over the wire"}, headers=signed("POST", "/api/alice/tasks")
            )
            assert created.status_code == 201, created.text
        # One JSON access line per request on stderr (written just after the response, so poll briefly).
        expected = {"method": "POST", "path": "/api/alice/tasks", "status": 201, "user": "alice"}
        for _ in range(50):
            access = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
            if any(expected.items() <= line.items() for line in access):
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"no access line {expected} in:\n{log.read_text()}")

        # A signed, chunked upload that never ends: the server answers 413 once it passes 64 KiB, while the
        # client is still sending -- the body is not read to the end first.
        sent, response = oversized_upload(port)
        assert response.startswith(b"HTTP/1.1 413"), response[:200]
        assert 64 * 1024 < sent < 512 * 1024
    finally:
        process.terminate()
        process.wait(timeout=10)
