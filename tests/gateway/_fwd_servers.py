"""Real servers on 127.0.0.1 for the loopback tests: an event loop in a background thread that hosts uvicorn
servers (the gateway, a test backend) and raw TCP servers (an upstream that hangs, one that records when its
client goes away). Everything started here is stopped by :meth:`LoopThread.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import httpx
import uvicorn

from gateway.__main__ import server_options

Scope = dict[str, Any]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_live(url: str, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Wait until a gateway subprocess answers ``/livez`` (failing early, with its stderr, if it exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            raise AssertionError(f"gateway exited with {process.returncode}: {stderr}")
        try:
            if httpx.get(f"{url}/livez", timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("gateway did not become live")


class LoopThread:
    """An asyncio loop in a daemon thread; coroutines are submitted with :meth:`run`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="loopback-servers", daemon=True)
        self._thread.start()
        self._servers: list[uvicorn.Server] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._raw: list[asyncio.base_events.Server] = []

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def start_uvicorn(self, app: Any, **options: Any) -> int:
        port = free_port()
        # The gateway CLI's own uvicorn settings (origin-form-only httptools protocol, no proxy headers, ...).
        settings = {**server_options(), "log_level": "warning", "timeout_graceful_shutdown": 1, **options}
        config = uvicorn.Config(app, host="127.0.0.1", port=port, **settings)
        server = uvicorn.Server(config)

        async def start() -> None:
            self._tasks.append(asyncio.ensure_future(server.serve()))
            while not server.started:
                if self._tasks[-1].done():
                    self._tasks[-1].result()
                    raise RuntimeError("uvicorn did not start")
                await asyncio.sleep(0.01)

        self.run(start())
        self._servers.append(server)
        return port

    def start_raw(self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> int:
        async def start() -> int:
            server = await asyncio.start_server(handler, "127.0.0.1", 0)
            self._raw.append(server)
            return int(server.sockets[0].getsockname()[1])

        return int(self.run(start()))

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.should_exit = True
            for raw in self._raw:
                raw.close()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=5)
            # Raw handlers may still be parked on a hanging connection: cancel whatever is left.
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            self.run(stop(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class Backend:
    """A small ASGI backend, dispatching on the last path segment:

    * ``/slow-stream``: sends ``first``, waits until :meth:`release` (``released`` records that it had to wait),
      then ``second``;
    * ``/upload``: reads the body chunk by chunk, sets ``first_chunk`` as soon as one arrives, answers with the
      total length;
    * ``/cookies``: three ``Set-Cookie`` headers; ``/gzip``: a gzip body with ``Content-Encoding: gzip``;
    * ``/big``: ``size`` bytes in 64 KiB chunks; ``/slow``: answers after ``delay`` seconds (query ``?delay=``).
    """

    GZIPPED = gzip.compress(b"compressed " * 1000)

    def __init__(self, loop: LoopThread) -> None:
        self._loop = loop
        self._release = asyncio.Event()
        self.first_chunk = threading.Event()
        self.in_flight = threading.Event()
        self.requests: list[tuple[str, list[tuple[bytes, bytes]]]] = []
        self.uploads: list[tuple[str, int]] = []  # complete request bodies received on /upload
        self.targets: list[bytes] = []  # request-targets exactly as received

    def release(self) -> None:
        self._loop.call(self._release.set)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            while scope["type"] == "lifespan":
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
            return
        path = scope["path"]
        self.requests.append((path, list(scope["headers"])))
        query = scope["query_string"]
        self.targets.append(scope["raw_path"] + (b"?" + query if query else b""))
        name = path.rsplit("/", 1)[-1]

        async def reply(status: int, headers: list[tuple[bytes, bytes]], *chunks: bytes) -> None:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

        if name == "slow-stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await asyncio.wait_for(self._release.wait(), 10)
            await send({"type": "http.response.body", "body": b"second"})
        elif name == "upload":
            total = 0
            while True:
                message = await receive()
                total += len(message.get("body", b""))
                if total:
                    self.first_chunk.set()
                if message["type"] == "http.disconnect":
                    return
                if not message.get("more_body"):
                    break
            self.uploads.append((path, total))
            await reply(200, [(b"content-type", b"text/plain")], str(total).encode())
        elif name == "cookies":
            cookies = [(b"set-cookie", b"a=1; Path=/"), (b"set-cookie", b"b=2; HttpOnly"), (b"set-cookie", b"c=3")]
            await reply(200, [(b"content-type", b"text/plain"), *cookies], b"ok")
        elif name == "gzip":
            headers = [(b"content-type", b"text/plain"), (b"content-encoding", b"gzip")]
            await reply(200, [*headers, (b"content-length", str(len(self.GZIPPED)).encode())], self.GZIPPED)
        elif name == "big":
            size = int(scope["query_string"] or b"1048576")
            chunk = bytes(range(256)) * 256
            chunks = [chunk] * (size // len(chunk))
            await reply(200, [(b"content-type", b"application/octet-stream")], *chunks)
        elif name == "slow":
            self.in_flight.set()
            await asyncio.sleep(float(scope["query_string"].decode().partition("=")[2] or "1"))
            await reply(200, [(b"content-type", b"text/plain")], b"slow done")
        else:
            await reply(200, [(b"content-type", b"text/plain")], b"ok " + path.encode())


class HangingUpstream:
    """Accepts connections, reads the request, never answers."""

    def __init__(self) -> None:
        self.connections = 0
        self.closed = threading.Event()  # set when the gateway closed a connection (EOF)

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await reader.read(65536):  # until the gateway gives up and closes the connection
                pass
            self.closed.set()
        except (asyncio.CancelledError, ConnectionError):
            pass  # LoopThread.close(); a cancelled handler task would make asyncio log an error
        finally:
            writer.close()


class EndlessUpstream:
    """Answers with a chunked body that never ends; records when its client closes the connection."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.closed_after: float | None = None

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n")
        started = time.monotonic()
        try:
            while True:
                writer.write(b"5\r\nchunk\r\n")
                await writer.drain()
                try:
                    # EOF from the gateway side means it closed the connection.
                    if await asyncio.wait_for(reader.read(1), 0.05) == b"":
                        break
                except TimeoutError:
                    continue
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            self.closed_after = time.monotonic() - started
            self.closed.set()
            writer.close()


class ScriptedUpstream:
    """Answers every request with the given raw bytes, then closes the connection (garbage, truncated bodies)."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(self.answer)
            await writer.drain()
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
