"""Helpers for the reliability tests: real gateway processes, a JWKS endpoint that can be broken on purpose, a
private PostgreSQL cluster, and socket counts read from ``/proc``.

* :class:`GatewayProcess`: ``python -m gateway`` on a free port with a given TOML text; its stderr is kept
  (bounded) so a test can check that nothing was logged at ERROR level.
* :class:`JwksServer`: a raw HTTP server on a :class:`tests.gateway._fwd_servers.LoopThread` serving a JWKS, or
  misbehaving in one of :data:`JWKS_FAULTS` (down, hanging, trickling, 500, garbage, oversized).
* :class:`PrivatePostgres`: a throw-away cluster (``initdb`` + ``pg_ctl``) on a free port, so a test may stop and
  restart PostgreSQL without touching the machine's shared server.
* :func:`connections`: the TCP connections of one process to (or from) one port, from ``/proc/<pid>/fd`` and
  ``/proc/net/tcp``: how the tests see whether the gateway leaked an upstream connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.gateway._fwd_servers import LoopThread, free_port
from tests.gateway.conftest import PROOF_SECRET

ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds have passed; return whether it became true."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, httpx.TransportError):
            if predicate():
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# --- sockets from /proc -----------------------------------------------------------------------------------------

#: /proc/net/tcp state codes (include/net/tcp_states.h).
TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


@dataclass(frozen=True)
class TcpSocket:
    local_port: int
    remote_port: int
    state: str
    inode: int


def tcp_table() -> list[TcpSocket]:
    sockets = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(name) as table:
            next(table)
            for line in table:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
                sockets.append(
                    TcpSocket(
                        int(local.rsplit(":", 1)[1], 16),
                        int(remote.rsplit(":", 1)[1], 16),
                        TCP_STATES.get(state, state),
                        inode,
                    )
                )
    return sockets


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` holds open (match them with :func:`tcp_table`)."""
    inodes = set()
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def connections(pid: int, *, to_port: int | None = None, from_port: int | None = None) -> list[str]:
    """States of the TCP sockets process ``pid`` holds open that are connected to ``to_port`` (its client side)
    or accepted on its own listening ``from_port`` (its server side; the listening socket itself excluded)."""
    inodes = socket_inodes(pid)
    found = []
    for sock in tcp_table():
        if sock.inode not in inodes or sock.state == "LISTEN":
            continue
        if (to_port is not None and sock.remote_port == to_port) or (
            from_port is not None and sock.local_port == from_port
        ):
            found.append(sock.state)
    return found


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (e.g. the workers of ``--workers N``)."""
    found = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        with contextlib.suppress(OSError):
            found.extend(int(child) for child in Path(task).read_text().split())
    return sorted(found)


# --- a gateway process ------------------------------------------------------------------------------------------


class GatewayProcess:
    """``python -m gateway`` with ``config`` (TOML text) on a free loopback port. Stop it with :meth:`stop`."""

    def __init__(
        self,
        config: str,
        directory: Path,
        *,
        workers: int = 1,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = directory / f"gateway-{self.port}.toml"
        self.config_path.write_text(config)
        self.metrics_dir = directory / f"prom-{self.port}"
        self.metrics_dir.mkdir()
        self.lines: collections.deque[str] = collections.deque(maxlen=20_000)
        self.total = 0  # lines read so far (``lines`` keeps the last 20 000)
        argv = [sys.executable, "-m", "gateway", "--config", str(self.config_path), "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--workers", str(workers), "--graceful-timeout", "2", *args]
        environment = {
            **os.environ,
            "EDGE_PROOF_SECRET": PROOF_SECRET,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        if workers > 1:
            environment["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own group: workers left behind by a killed supervisor die with it
        )
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
            self.total += 1

    def wait_live(self, timeout: float = 30.0) -> GatewayProcess:
        def live() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited with {self.process.returncode}:\n" + self.tail())
            return httpx.get(f"{self.url}/livez", timeout=1, trust_env=False).status_code == 200

        assert wait_until(live, timeout, 0.1), "gateway did not become live:\n" + self.tail()
        return self

    def tail(self, count: int = 40) -> str:
        return "\n".join(list(self.lines)[-count:])

    def errors(self, since: int = 0) -> list[str]:
        """Log lines since line number ``since`` (a past ``total``) that report a failure of the gateway itself,
        not the WARNINGs of a fault it survived."""
        recent = list(self.lines)[-(self.total - since) :] if self.total > since else []
        return [line for line in recent if line.startswith(("ERROR", "CRITICAL")) or "Traceback" in line]

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a Prometheus sample over every label set matching ``labels``."""
        text = httpx.get(f"{self.url}/metrics", timeout=5, trust_env=False).text
        total = 0.0
        for line in text.splitlines():
            match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
            if match is None or match.group(1) != name:
                continue
            found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            if all(found.get(key) == value for key, value in labels.items()):
                total += float(match.group(3))
        return total

    def stop(self) -> int | None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(15)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(5)
        self._pump.join(5)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return self.process.returncode


# --- a JWKS endpoint that can be broken -------------------------------------------------------------------------

#: Content variants (bad JSON, declared oversize, no usable key...) are covered in-process by
#: tests/gateway/test_jwks.py; these are the ones a real socket makes different.
JWKS_FAULTS = ("down", "hang", "trickle", "500", "garbage", "oversized-chunked")


class JwksServer:
    """Serves ``document`` at any path (one request per connection), or misbehaves as ``mode`` says:

    * ``down``: nothing listens on the port (connection refused), until the mode changes back;
    * ``hang``: reads the request, never answers; ``trickle``: sends a response head, then a byte now and then;
    * ``500``; ``garbage``: 200 with a body that is not JSON;
    * ``oversized-chunked``: a valid JWKS padded to ``oversized_bytes``, chunked (no Content-Length), so only
      counting the bytes can stop it.
    """

    def __init__(self, loop: LoopThread, document: dict[str, Any], *, oversized_bytes: int = 1 << 20) -> None:
        self._loop = loop
        self.document = document
        self.oversized_bytes = oversized_bytes
        self.requests = 0
        self._mode = "ok"
        self._server: asyncio.base_events.Server | None = None
        self.port = free_port()
        self._loop.run(self._listen())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks"

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        assert mode == "ok" or mode in JWKS_FAULTS, mode
        if mode == "down" and self._server is not None:
            self._loop.run(self._close())
        elif mode != "down" and self._server is None:
            self._loop.run(self._listen())
        self._mode = mode

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()

    def close(self) -> None:
        self._loop.run(self._close())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            mode = self._mode
            if mode == "hang":
                while await reader.read(65536):
                    pass
                return
            if mode == "trickle":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{")
                while True:
                    await asyncio.sleep(0.1)
                    writer.write(b" ")
                    await writer.drain()
            if mode == "500":
                writer.write(_response(500, b'{"error":"internal"}'))
            elif mode == "garbage":
                writer.write(_response(200, b"<html>this is not a key set</html>"))
            elif mode == "oversized-chunked":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n")
                writer.write(b"connection: close\r\n\r\n")
                body = self._padded()
                for start in range(0, len(body), 16384):
                    chunk = body[start : start + 16384]
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(_response(200, json.dumps(self.document).encode()))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def _padded(self) -> bytes:
        # A valid key set (the real keys plus padding keys), so only its size is wrong.
        document = json.dumps(self.document).encode()
        padding = json.dumps({"kty": "oct", "kid": "pad", "k": "x" * self.oversized_bytes}).encode()
        return document[:-2] + b", " + padding + b"]}"


def _response(status: int, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + b"connection: close\r\n\r\n" + body


# --- a private PostgreSQL cluster -------------------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl, or None."""
    found = sorted(
        (Path(path).parent for path in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    return found[-1] if found else None


class PrivatePostgres:
    """A PostgreSQL cluster of its own in a temporary directory, on a free port (trust auth, loopback only).

    initdb refuses to run as root, so as root the tools run as the ``postgres`` user (``runuser``). fsync is off:
    the tests restart the server, never the machine, and committed data survives that without fsync."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="edge-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
            self._as_owner = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        argv = [*self._as_owner, str(self.bindir / tool), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n{self.tail()}")

    def tail(self, count: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-count:])
        return ""

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


# --- an upstream that can be broken -----------------------------------------------------------------------------

UPSTREAM_FAULTS = ("down", "hang", "close-before-head", "close-mid-body", "malformed", "reset")


class RawUpstream:
    """An HTTP/1.1 upstream on raw sockets whose behaviour is ``mode``:

    * ``ok``: answers every request ``200 ok`` on a keep-alive connection, after reading its body;
    * ``sink``: the same, but reads the body slowly (records ``complete``/``incomplete`` bodies);
    * ``endless``: a chunked response that never ends;
    * ``down``: the listener and every open connection are closed (connection refused) until the mode changes;
    * ``hang``: reads the request, never answers; ``close-before-head``: reads the request, closes;
      ``close-mid-body``: a head announcing 1000 bytes, 100 of them, then closes; ``malformed``: not HTTP;
      ``reset``: a TCP RST instead of an answer.

    ``open`` counts the connections the server side holds right now; ``accepted`` every connection so far.
    """

    def __init__(self, loop: LoopThread, mode: str = "ok") -> None:
        self._loop = loop
        self._mode = mode
        self.port = free_port()
        self.open = 0
        self.accepted = 0
        self.answered = 0
        self.body_bytes = 0  # request body bytes received, over all requests
        self.complete: list[int] = []  # body sizes fully received
        self.incomplete: list[int] = []  # body sizes received before the peer went away
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None
        if mode != "down":
            self._loop.run(self._listen())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode == "down":
            self._loop.run(self._close())
        elif self._server is None:
            self._loop.run(self._listen())
        self._mode = mode

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.close()

    def close(self) -> None:
        self._loop.run(self._close())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        self._writers.add(writer)
        try:
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            self.open -= 1

    def _count(self, size: int) -> None:
        self.body_bytes += size

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One request on the connection; whether to read another."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the client closed an idle keep-alive connection
        mode = self._mode
        match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        length = int(match.group(1)) if match else 0
        if mode == "hang":
            while await reader.read(65536):
                pass
            return False
        if mode == "close-before-head":
            return False
        if mode == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if mode == "malformed":
            writer.write(b"HTTP/1.1 2xx Fine\r\nthis is: not\r\nHTTP at all\r\n\r\n")
            await writer.drain()
            return False
        if mode == "close-mid-body":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1000\r\n\r\n" + b"x" * 100)
            await writer.drain()
            return False
        if mode == "endless":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n")
            chunk = b"x" * 16384
            while True:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                await asyncio.sleep(0.005)
        received = 0
        chunked = re.search(rb"(?im)^transfer-encoding:\s*chunked", head) is not None
        try:
            if chunked:
                received = await _read_chunked(reader, self._count)
            else:
                while received < length:
                    data = await reader.read(min(65536, length - received))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", length - received)
                    received += len(data)
                    self.body_bytes += len(data)
                    if mode == "sink":
                        await asyncio.sleep(0.01)  # a slow consumer: the client's upload backs up
        except (asyncio.IncompleteReadError, ConnectionError):
            self.incomplete.append(received)
            return False
        if length or chunked:
            self.complete.append(received)  # also before the answer, for the same reason
        self.answered += 1  # before the answer leaves: a client that has it may count on this
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        return True


async def _read_chunked(reader: asyncio.StreamReader, on_data: Callable[[int], None] | None = None) -> int:
    total = 0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return total
        await reader.readexactly(size + 2)
        total += size
        if on_data is not None:
            on_data(size)


# --- load that records every outcome ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    started: float  # time.monotonic()
    ended: float
    status: int | str  # the HTTP status, or the name of the exception
    value: Any = None  # whatever the action wants kept (a created task id, a session token)


class Recorder(threading.Thread):
    """Calls ``action(i)`` -> (status, value) every ``interval`` seconds (steady rate, never overlapping) until
    :meth:`stop`, recording a :class:`Sample` per call; an exception is recorded by its class name."""

    def __init__(self, action: Callable[[int], tuple[int, Any]], interval: float, *, limit: float = 120.0) -> None:
        super().__init__(daemon=True)
        self.action = action
        self.interval = interval
        self.limit = limit  # a bound on the loop whatever happens to the test
        self.samples: list[Sample] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        begun = time.monotonic()
        index = 0
        while not self._stopping.is_set() and time.monotonic() - begun < self.limit:
            started = time.monotonic()
            try:
                status, value = self.action(index)
            except Exception as exc:
                status, value = type(exc).__name__, None
            self.samples.append(Sample(started, time.monotonic(), status, value))
            index += 1
            self._stopping.wait(max(0.0, started + self.interval - time.monotonic()))

    def stop(self) -> list[Sample]:
        self._stopping.set()
        self.join(30)
        return self.samples


def no_cookie_client(base_url: str, timeout: float = 10.0) -> httpx.Client:
    """An API client that stores no cookies (cookie-carrying state changes need an Origin; API clients send none)."""
    from http.cookiejar import CookieJar, DefaultCookiePolicy

    jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return httpx.Client(base_url=base_url, timeout=timeout, trust_env=False, cookies=jar)


PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class User:
    email: str
    id: str
    session: str
    jwt: str

    @property
    def bearer(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.jwt}"}


def sign_up(client: httpx.Client, name: str) -> User:
    """A new user through the gateway, with a session token and a JWT."""
    email = f"{name}-{os.urandom(4).hex()}@example.com"
    response = client.post("/api/auth/sign-up/email", json={"name": name, "email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    session = response.json()["token"]
    token = client.get("/api/auth/token", headers={"authorization": f"Bearer {session}"})
    assert token.status_code == 200, token.text
    return User(email, response.json()["user"]["id"], session, token.json()["token"])


def task_ids(client: httpx.Client, user: User) -> set[str]:
    """Every task id the user has, through the gateway (all pages)."""
    ids: set[str] = set()
    cursor = None
    while True:
        params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
        response = client.get(f"/api/{user.id}/tasks", params=params, headers=user.bearer)
        assert response.status_code == 200, response.text
        page = response.json()
        ids.update(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return ids
