"""Hostile clients against the real gateway process: oversized heads (431), slow heads (slowloris), oversized
bodies (413 without reading them), and tokens with random ``kid``s (JWKS fetches bounded by the cooldown)."""

from __future__ import annotations

import concurrent.futures
import json
import re
import secrets
import select
import socket
import threading
import time

import httpx
import pytest

from tests.gateway.conftest import make_key, mint
from tests.reliability._support import wait_until
from tests.reliability.conftest import (
    HEADER_TIMEOUT,
    JWKS_COOLDOWN,
    JWKS_TIMEOUT,
    JWKS_TTL,
    SMALL_BODY,
    UPSTREAM_TIMEOUT,
    Edge,
)

pytestmark = pytest.mark.integration

#: gateway.__main__.DEFAULT_MAX_HEADER_BYTES: the edge gateway runs with the default.
MAX_HEAD = 65536


def _connect(edge: Edge) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", edge.gateway.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _exchange(edge: Edge, request: bytes) -> tuple[int, bytes]:
    """Send raw bytes, return the status and everything read until the gateway closed the connection."""
    with _connect(edge) as sock:
        sock.sendall(request)
        received = b""
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
    return int(received.split(b" ", 2)[1]), received


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET /ok/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", id="one huge header"),
        pytest.param(
            b"GET /ok/x HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(12_000)) + b"\r\n",
            id="many small headers",
        ),
        pytest.param(b"GET /ok/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", id="huge request-target"),
        pytest.param(
            b"GET /ok/x HTTP/1.1\r\nHost: a\r\nX-Unfinished: " + b"a" * 100_000, id="huge header never finished"
        ),
    ],
)
def test_an_oversized_request_head_is_431_and_never_forwarded(edge: Edge, head: bytes) -> None:
    before = len(edge.backend.requests)
    started = time.monotonic()
    status, response = _exchange(edge, head)
    assert status == 431
    assert time.monotonic() - started < 2
    body = json.loads(response.partition(b"\r\n\r\n")[2])
    assert body["error"] == "request_header_fields_too_large"
    assert b"connection: close" in response.lower()
    assert len(edge.backend.requests) == before


def test_a_large_head_within_the_limit_is_served(edge: Edge) -> None:
    cookie = b"c=" + b"v" * (MAX_HEAD // 2)
    head = b"GET /ok/big-head HTTP/1.1\r\nHost: a\r\nConnection: close\r\nCookie: " + cookie + b"\r\n\r\n"
    status, _ = _exchange(edge, head)
    assert status == 200
    path, headers = edge.backend.requests[-1]
    assert path == "/ok/big-head"
    assert dict(headers)[b"cookie"] == cookie


def test_a_pipelined_body_larger_than_the_head_limit_is_not_mistaken_for_a_head(edge: Edge) -> None:
    body = b"z" * (3 * MAX_HEAD)
    head = b"POST /sink/pipelined HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    status, _ = _exchange(edge, head + body)  # one write: head and body arrive together
    assert status == 200
    assert edge.sink.complete[-1] == len(body)


def test_slow_header_clients_are_closed_after_the_header_timeout(edge: Edge) -> None:
    idle = [_connect(edge) for _ in range(10)]
    trickling = [_connect(edge) for _ in range(10)]
    everyone = idle + trickling
    opened = time.monotonic()
    closed_after: dict[socket.socket, float] = {}
    for sock in trickling:
        sock.sendall(b"GET /ok/slow HTTP/1.1\r\n")
    try:
        # A well-behaved client is served while the slow ones hold their connections.
        assert httpx.get(f"{edge.gateway.url}/ok/meanwhile", timeout=5, trust_env=False).status_code == 200
        deadline = opened + HEADER_TIMEOUT + 4
        while len(closed_after) < len(everyone) and time.monotonic() < deadline:
            for sock in trickling:
                if sock not in closed_after:
                    try:
                        sock.sendall(b"X")  # one byte of a header name every 0.1 s: never a whole head
                    except OSError:
                        closed_after[sock] = time.monotonic() - opened
            readable, _, _ = select.select([s for s in everyone if s not in closed_after], [], [], 0.1)
            for sock in readable:
                try:
                    data = sock.recv(1024)
                except OSError:
                    data = b""
                assert data == b"", f"the gateway answered a request it never completed: {data!r}"
                closed_after[sock] = time.monotonic() - opened
    finally:
        for sock in everyone:
            sock.close()
    assert len(closed_after) == len(everyone), f"{len(everyone) - len(closed_after)} slow clients still connected"
    assert all(HEADER_TIMEOUT * 0.8 <= after <= HEADER_TIMEOUT + 3 for after in closed_after.values()), closed_after


def test_a_head_sent_slowly_but_within_the_timeout_is_served(edge: Edge) -> None:
    with _connect(edge) as sock:
        for part in (b"GET /ok/patient HTTP/1.1\r\n", b"Host: a\r\n", b"Connection: close\r\n", b"\r\n"):
            sock.sendall(part)
            time.sleep(HEADER_TIMEOUT / 6)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_an_idle_keep_alive_connection_outlives_the_header_timeout(edge: Edge) -> None:
    # Between requests uvicorn's keep-alive timeout (5 s) applies, not the header timeout.
    with httpx.Client(base_url=edge.gateway.url, timeout=5, trust_env=False) as client:
        assert client.get("/ok/first").status_code == 200
        time.sleep(HEADER_TIMEOUT + 0.5)
        assert client.get("/ok/second").status_code == 200
        assert client.get("/ok/third").status_code == 200


def test_a_declared_oversized_body_is_413_before_it_is_sent(edge: Edge) -> None:
    accepted = edge.sink.accepted
    with _connect(edge) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /small/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000\r\n\r\n" + b"x" * 1000)
        head = sock.recv(65536)
        elapsed = time.monotonic() - started
    assert head.startswith(b"HTTP/1.1 413 ")
    assert elapsed < 2
    assert edge.sink.accepted == accepted  # refused on the declared length: no upstream connection at all


def test_a_chunked_oversized_body_is_413_without_being_read_whole(edge: Edge) -> None:
    complete = list(edge.sink.complete)
    sent = 0
    answer = b""
    with _connect(edge) as sock:
        sock.sendall(b"POST /small/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (1024, b"y" * 1024)
        sock.settimeout(0.5)
        try:
            while sent < 64 * 1024 * 1024:
                sock.sendall(chunk)
                sent += 1024
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    answer = sock.recv(65536)
                    break
        except OSError:
            pass  # the gateway closed while we were still sending: it stopped reading
        if not answer:
            sock.settimeout(5)
            try:
                answer = sock.recv(65536)
            except OSError:
                answer = b""
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert sent < 16 * 1024 * 1024, f"the client could push {sent} bytes into a {SMALL_BODY}-byte route"
    assert [size for size in edge.sink.complete[len(complete) :] if size > SMALL_BODY] == []


def test_random_kids_cost_at_most_one_jwks_fetch_per_cooldown(edge: Edge) -> None:
    stranger = make_key("EdDSA", "stranger")
    before = edge.jwks.requests
    started = time.monotonic()
    latencies: list[float] = []
    lock = threading.Lock()

    client = httpx.Client(base_url=edge.gateway.url, timeout=10, trust_env=False)

    def one(_: int) -> int:
        token = mint(stranger, sub="alice", headers={"kid": secrets.token_urlsafe(12)})
        sent = time.monotonic()
        status = client.get("/api/alice/tasks", headers={"authorization": f"Bearer {token}"}).status_code
        with lock:
            latencies.append(time.monotonic() - sent)
        return status

    with client, concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(400)))
    elapsed = time.monotonic() - started
    fetches = edge.jwks.requests - before
    assert set(results) == {401}
    # One unknown-kid fetch per cooldown, plus the scheduled refresh once per TTL, plus one at each edge.
    bound = elapsed / JWKS_COOLDOWN + elapsed / JWKS_TTL + 2
    assert fetches <= bound, (fetches, elapsed)
    assert max(latencies) < JWKS_TIMEOUT + 2
    # And the known key still works, at once.
    assert wait_until(
        lambda: (
            httpx.get(
                f"{edge.gateway.url}/api/alice/tasks", headers={"authorization": f"Bearer {edge.token()}"}, timeout=5
            ).status_code
            == 200
        ),
        2,
    )


def _send_body_slowly(edge: Edge, path: bytes, pieces: int, every: float, limit: float) -> tuple[bytes, float]:
    """Send a head announcing 1000 bytes, then ``pieces`` single bytes ``every`` seconds apart (then nothing), until
    the gateway answers or ``limit`` seconds pass; return the answer and when it came."""
    with _connect(edge) as sock:
        sock.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
        started = time.monotonic()
        sock.settimeout(every)
        answer, sent = b"", 0
        while time.monotonic() - started < limit and not answer:
            try:
                if sent < pieces:
                    sock.sendall(b"x")
                    sent += 1
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
        elapsed = time.monotonic() - started
        head, _, body = answer.partition(b"\r\n\r\n")
        match = re.search(rb"(?i)content-length: *(\d+)", head)
        sock.settimeout(5)
        while match and len(body) < int(match.group(1)):
            more = sock.recv(65536)
            if not more:
                break
            body += more
        return head + b"\r\n\r\n" + body if answer else b"", elapsed


def test_a_stalled_upload_is_408_after_the_route_timeout(edge: Edge) -> None:
    # The head is complete, so the header timeout is over; the upstream waits for the body and never answers, and
    # aiohttp's read timeout only starts once the body is sent: without a body timeout this waited for ever.
    edge.flaky.mode = "ok"
    answer, elapsed = _send_body_slowly(edge, b"/flaky/stalled", pieces=3, every=0.2, limit=UPSTREAM_TIMEOUT + 4)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert elapsed < 3 * 0.2 + UPSTREAM_TIMEOUT + 2
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"
    assert wait_until(lambda: edge.flaky.open <= 1, 3), edge.flaky.open  # the upstream request was dropped too


def test_a_trickled_upload_is_cut_off(edge: Edge) -> None:
    # A byte every 0.25 s never leaves the body idle for the route's timeout; the minimum rate (default 500 bytes/s
    # once the timeout has passed, gateway/proxy.py) cuts it off just after the timeout instead.
    edge.flaky.mode = "ok"
    answer, _ = _send_body_slowly(edge, b"/flaky/trickled", pieces=1000, every=0.25, limit=UPSTREAM_TIMEOUT + 0.75)
    assert answer.startswith((b"HTTP/1.1 408 ", b"HTTP/1.1 504 ")), answer[:100]


def test_a_bare_line_end_after_a_response_does_not_hold_the_connection_open(edge: Edge) -> None:
    """A CRLF between requests (llhttp skips it: no request begins) cancelled the keep-alive timeout and armed no
    header timeout, so one line end kept a connection open for good. Now the header timeout starts."""
    with _connect(edge) as sock:
        sock.sendall(b"GET /ok/first HTTP/1.1\r\nHost: a\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"\r\n")
        started = time.monotonic()
        sock.settimeout(HEADER_TIMEOUT + 5)
        assert sock.recv(65536) == b""  # closed by the gateway, nothing answered
        assert HEADER_TIMEOUT * 0.8 <= time.monotonic() - started <= HEADER_TIMEOUT + 3
