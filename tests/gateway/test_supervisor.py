"""``--workers N`` under gateway/supervisor.py: a SO_REUSEPORT listener per worker, connections spread over them, a
killed worker replaced, SIGTERM drains and exits 0, and every way of failing to start exits non-zero at once.

Which worker holds a connection is read from ``/proc``: the socket inodes in each process's fd table matched
against ``/proc/net/tcp``."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import gateway.__main__ as cli
from gateway import supervisor
from tests.gateway._fwd_servers import Backend, LoopThread, free_port, wait_live
from tests.gateway.conftest import PROOF_SECRET
from tests.reliability._support import children, socket_inodes, tcp_table

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LISTEN, ESTABLISHED = "LISTEN", "ESTABLISHED"


# --- what /proc says ----------------------------------------------------------------------------------------------


def _tcp(port: int, state: str) -> set[int]:
    """Inodes of the TCP sockets on local ``port`` in ``state``."""
    return {sock.inode for sock in tcp_table() if sock.local_port == port and sock.state == state}


def _listeners(supervisor_pid: int, port: int) -> dict[int, set[int]]:
    """Worker pid -> its listening sockets on ``port`` (children without one are not workers serving yet)."""
    listening = _tcp(port, LISTEN)
    found = {pid: socket_inodes(pid) & listening for pid in children(supervisor_pid)}
    return {pid: inodes for pid, inodes in found.items() if inodes}


def _wait_for(predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"not true after {timeout} s")


# --- a gateway process --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _gateway(
    tmp_path: Path, upstream: str = "http://127.0.0.1:9", extra_env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[[routes]]\npath = "/b/{{rest:path}}"\nupstream = "{upstream}"\nauth = "public"\n')
    port = free_port()
    env = {**os.environ, "EDGE_PROOF_SECRET": PROOF_SECRET, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    argv = [sys.executable, "-m", "gateway", "--config", str(config), "--port", str(port), "--workers", "2"]
    argv += ["--graceful-timeout", "3", "--no-access-log"]
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        wait_live(f"http://127.0.0.1:{port}", process)
        _wait_for(lambda: len(_listeners(process.pid, port)) == 2)
        yield process, port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # its own group: the workers too
                process.wait(5)
        assert process.stderr is not None
        process.stderr.close()


def _open(port: int, count: int) -> list[socket.socket]:
    """``count`` keep-alive connections, each answered once (so each has been accepted by a worker)."""
    connections = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /livez HTTP/1.1\r\nhost: gateway\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200"), "no answer"
        connections.append(sock)
    return connections


# --- tests --------------------------------------------------------------------------------------------------------


def test_each_worker_listens_on_its_own_socket_and_connections_spread_over_them(tmp_path: Path) -> None:
    with _gateway(tmp_path) as (process, port):
        workers = _listeners(process.pid, port)
        assert len(workers) == 2
        first, second = workers.values()
        assert len(first) == len(second) == 1 and first != second  # uvicorn's supervisor shares one socket
        assert not socket_inodes(process.pid) & _tcp(port, LISTEN)  # the parent's reservation never listens
        connections = _open(port, 40)
        try:
            established = _tcp(port, ESTABLISHED)
            held = {pid: len(socket_inodes(pid) & established) for pid in workers}
        finally:
            for sock in connections:
                sock.close()
    assert sum(held.values()) == 40
    # The kernel hashes each connection to a listener: one worker with fewer than 5 of 40 has odds of ~1e-7.
    assert min(held.values()) >= 5, held


def test_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    with _gateway(tmp_path) as (process, port):
        before = _listeners(process.pid, port)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        after = _wait_for(lambda: (found := _listeners(process.pid, port)).keys() - before.keys() and found)
        assert victim not in after and len(after) == 2
        connections = _open(port, 20)  # every connection is answered, whichever listener it is hashed to
        for sock in connections:
            sock.close()
        assert process.poll() is None


def test_a_killed_workers_live_gauges_leave_the_metrics(tmp_path: Path) -> None:
    """A worker killed outright never runs its shutdown; the supervisor drops its live gauges (the JWKS and
    revocation timestamps, kept per worker) so a dead worker's last fetch time does not age into a false alarm."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    metrics = tmp_path / "metrics"
    metrics.mkdir()
    with _gateway(tmp_path, extra_env={"PROMETHEUS_MULTIPROC_DIR": str(metrics)}) as (process, port):
        workers = _listeners(process.pid, port)
        for pid in workers:  # what a worker writes once it has fetched an issuer's keys
            gauge = MmapedDict(str(metrics / f"gauge_livemin_{pid}.db"))
            key = mmap_key("gateway_jwks_keys_updated_timestamp_seconds", "x", ["issuer"], ["iss"], "h")
            gauge.write_value(key, 1.0, 0.0)
            gauge.close()
        victim, survivor = sorted(workers)
        os.kill(victim, signal.SIGKILL)
        _wait_for(lambda: victim not in _listeners(process.pid, port) and len(_listeners(process.pid, port)) == 2)
        _wait_for(lambda: not (metrics / f"gauge_livemin_{victim}.db").exists())
        assert (metrics / f"gauge_livemin_{survivor}.db").exists()


def test_sigterm_drains_in_flight_requests_then_stops_every_worker_and_exits_0(tmp_path: Path) -> None:
    loop = LoopThread()
    try:
        backend = Backend(loop)
        with _gateway(tmp_path, f"http://127.0.0.1:{loop.start_uvicorn(backend)}") as (process, port):
            workers = set(_listeners(process.pid, port))
            result: list[httpx.Response | Exception] = []

            def slow_request() -> None:
                try:
                    result.append(httpx.get(f"http://127.0.0.1:{port}/b/slow?delay=1", timeout=10, trust_env=False))
                except Exception as exc:
                    result.append(exc)

            thread = threading.Thread(target=slow_request)
            thread.start()
            assert backend.in_flight.wait(5)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0
            thread.join(10)
            assert time.monotonic() - started < 3 + supervisor.KILL_MARGIN  # nobody waited for a SIGKILL
            assert not [pid for pid in workers if os.path.exists(f"/proc/{pid}")]
    finally:
        loop.close()
    response = result[0]
    assert isinstance(response, httpx.Response), response
    assert (response.status_code, response.text) == (200, "slow done")


@pytest.mark.parametrize(
    "reuse_port", [pytest.param(False, id="plain listener"), pytest.param(True, id="SO_REUSEPORT")]
)
def test_a_port_already_listened_on_exits_3_at_once(tmp_path: Path, reuse_port: bool) -> None:
    # With SO_REUSEPORT, the other listener stands for a second gateway started on the same port by mistake.
    config = tmp_path / "gateway.toml"
    config.write_text('[[routes]]\npath = "/b/{rest:path}"\nupstream = "http://127.0.0.1:9"\nauth = "public"\n')
    with socket.socket() as taken:
        if reuse_port:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        argv = [sys.executable, "-m", "gateway", "--config", str(config), "--workers", "2"]
        argv += ["--port", str(taken.getsockname()[1])]
        env = {**os.environ, "EDGE_PROOF_SECRET": PROOF_SECRET}
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 3, done.stderr
    assert "Cannot listen on 127.0.0.1" in done.stderr
    assert "Started server process" not in done.stderr  # no worker was started


def test_a_bad_configuration_exits_2_before_any_worker_starts(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[[routes]]\npath = "/b"\nupstream = "http://127.0.0.1:9"\nauth = "sometimes"\n')
    argv = [sys.executable, "-m", "gateway", "--config", str(config), "--workers", "2", "--port", str(free_port())]
    env = {**os.environ, "EDGE_PROOF_SECRET": PROOF_SECRET}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "invalid configuration" in done.stderr
    assert "Started parent process" not in done.stderr


# Factories for the workers of the next test (spawned processes import this module by name).
def failing_app() -> Any:
    raise RuntimeError("the app cannot be built")


def crashing_app() -> Any:
    os._exit(1)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        pytest.param("failing_app", "failed to start", id="startup failure: no restart"),
        pytest.param("crashing_app", f"exited {supervisor.MAX_QUICK_EXITS} times in a row", id="crash loop: gives up"),
    ],
)
def test_workers_that_cannot_start_stop_the_gateway_with_status_3(factory: str, message: str) -> None:
    script = (
        "import sys, uvicorn; from gateway.supervisor import Supervisor; "
        f"config = uvicorn.Config('tests.gateway.test_supervisor:{factory}', factory=True, port={free_port()}); "
        "sys.exit(Supervisor(config, 2, restart_delay=0.02).run())"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 3, done.stderr
    assert message in done.stderr
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("available", [pytest.param(True, id="Linux"), pytest.param(False, id="no SO_REUSEPORT")])
def test_the_cli_uses_the_supervisor_where_so_reuseport_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, available: bool
) -> None:
    import uvicorn

    config = tmp_path / "gateway.toml"
    config.write_text('[[routes]]\npath = "/b/{rest:path}"\nupstream = "http://127.0.0.1:9"\nauth = "public"\n')
    # main() writes these for its workers: registered here so that they are restored afterwards.
    monkeypatch.setenv("EDGE_PROOF_SECRET", PROOF_SECRET)
    monkeypatch.setenv(cli.CONFIG_ENV, "unset")
    # set, then deleted: only a variable monkeypatch saw is restored (main() sets it for its workers)
    monkeypatch.setenv(cli.MULTIPROC_ENV, "unset")
    monkeypatch.delenv(cli.MULTIPROC_ENV)
    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(supervisor, "available", lambda: available)
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append(("uvicorn.run", options)))
    # uvicorn.Config applies the gateway's logging setup to the whole process: not to the test runner's.
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda self: None)

    def supervise(self: supervisor.Supervisor) -> int:
        calls.append(("supervisor", self))
        return 0

    monkeypatch.setattr(supervisor.Supervisor, "run", supervise)

    argv = ["--config", str(config), "--workers", "2", "--graceful-timeout", "7", "--port", "8123"]
    assert cli.main(argv) == 0

    ((how, what),) = calls
    if available:
        assert how == "supervisor" and what.count == 2
        server = what.config
        assert (server.app, server.factory, server.port) == ("gateway.__main__:worker_app", True, 8123)
        assert (server.http, server.timeout_graceful_shutdown, server.proxy_headers) == (cli.HTTP_PROTOCOL, 7, False)
    else:
        assert how == "uvicorn.run" and what["workers"] == 2 and what["timeout_graceful_shutdown"] == 7
