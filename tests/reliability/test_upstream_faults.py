"""An upstream that breaks under the real gateway process: refused, hanging, closing before or in the middle of its
response, speaking garbage, resetting. Each is a 502/504 within the route's timeout (or, once the head is out, an
aborted client connection); the gateway drops the broken connections, and the next request to the upstream once
it is healthy again succeeds, including a POST, which is never retried."""

from __future__ import annotations

import concurrent.futures
import socket
import time

import httpx
import pytest

from tests.reliability._support import UPSTREAM_FAULTS, connections, wait_until
from tests.reliability.conftest import UPSTREAM_TIMEOUT, Edge

pytestmark = pytest.mark.integration

SLACK = 1.5

EXPECTED = {
    "down": 502,
    "hang": 504,
    "close-before-head": 502,
    "close-mid-body": None,  # the head is already out: the client connection is aborted instead
    "malformed": 502,
    "reset": 502,
}
assert set(EXPECTED) == set(UPSTREAM_FAULTS)


def _gateway_connections(edge: Edge, port: int) -> list[str]:
    return connections(edge.gateway.pid, to_port=port)


@pytest.fixture
def client(edge: Edge):
    with httpx.Client(base_url=edge.gateway.url, timeout=10, trust_env=False) as client:
        yield client


@pytest.mark.parametrize("fault", UPSTREAM_FAULTS)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_broken_upstream_is_a_timely_5xx_and_the_pool_recovers(
    edge: Edge, client: httpx.Client, fault: str, method: str
) -> None:
    flaky = edge.flaky
    flaky.mode = "ok"
    assert client.get("/flaky/warm").status_code == 200  # a pooled keep-alive connection the fault must not poison
    flaky.mode = fault
    try:
        started = time.monotonic()
        if EXPECTED[fault] is None:
            with pytest.raises(httpx.RemoteProtocolError):
                client.request(method, "/flaky/x", content=b"data" if method == "POST" else None)
        else:
            response = client.request(method, "/flaky/x", content=b"data" if method == "POST" else None)
            assert response.status_code == EXPECTED[fault], response.text
            assert response.json()["error"] in ("bad_gateway", "gateway_timeout")
        elapsed = time.monotonic() - started
        if fault == "hang":
            assert UPSTREAM_TIMEOUT * 0.9 <= elapsed < UPSTREAM_TIMEOUT + SLACK
        else:
            assert elapsed < SLACK
    finally:
        flaky.mode = "ok"
    # Healthy again: the very next request succeeds, whatever the pool held.
    answered = flaky.answered
    assert client.request(method, "/flaky/after", content=b"data" if method == "POST" else None).status_code == 200
    assert flaky.answered == answered + 1
    # Broken connections were closed, not pooled: at most the one keep-alive connection of that last request.
    assert wait_until(lambda: len(_gateway_connections(edge, flaky.port)) <= 1, 3), _gateway_connections(
        edge, flaky.port
    )
    assert wait_until(lambda: flaky.open <= 1, 3), flaky.open


def test_a_hanging_upstream_holds_no_one_else_up(edge: Edge, client: httpx.Client) -> None:
    edge.flaky.mode = "hang"
    slow: list[tuple[int, float]] = []
    fast: list[tuple[int, float]] = []

    def one(path: str, into: list[tuple[int, float]]) -> None:
        started = time.monotonic()
        status = client.get(path).status_code
        into.append((status, time.monotonic() - started))

    try:
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            hanging = [pool.submit(one, f"/flaky/stuck-{i}", slow) for i in range(20)]
            time.sleep(0.2)  # the 20 are parked on the upstream now
            healthy = [pool.submit(one, f"/ok/meanwhile-{i}", fast) for i in range(20)]
            for future in [*hanging, *healthy]:
                future.result()
    finally:
        edge.flaky.mode = "ok"
    assert {status for status, _ in slow} == {504}
    assert max(elapsed for _, elapsed in slow) < UPSTREAM_TIMEOUT + SLACK + 0.5
    assert {status for status, _ in fast} == {200}
    assert max(elapsed for _, elapsed in fast) < SLACK
    assert wait_until(lambda: len(_gateway_connections(edge, edge.flaky.port)) <= 1, 3)
    assert client.get("/flaky/after").status_code == 200


def test_an_upstream_restarted_between_requests_costs_no_request(edge: Edge, client: httpx.Client) -> None:
    # The gateway's pooled connections die with the old process; a POST (never retried) must not land on one.
    flaky = edge.flaky
    for round_ in range(5):
        flaky.mode = "ok"
        assert client.post("/flaky/before", content=b"x").status_code == 200
        flaky.mode = "down"
        time.sleep(0.05)
        flaky.mode = "ok"
        time.sleep(0.05)
        response = client.post(f"/flaky/after-restart-{round_}", content=b"x")
        assert response.status_code == 200, (round_, response.text)


# --- the client goes away ------------------------------------------------------------------------------------


def _baseline(edge: Edge, port: int) -> int:
    return len(_gateway_connections(edge, port))


def test_a_client_leaving_mid_download_cancels_the_upstream_request(edge: Edge) -> None:
    endless = edge.endless
    before = _baseline(edge, endless.port)
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", edge.gateway.port), timeout=5) as sock:
            sock.sendall(b"GET /endless/x HTTP/1.1\r\nHost: a\r\n\r\n")
            received = 0
            while received < 256 * 1024:
                received += len(sock.recv(65536))
        # The download never ends on its own: only the gateway closing its upstream connection ends it.
        assert wait_until(lambda: endless.open == 0, 3), endless.open
    assert wait_until(lambda: _baseline(edge, endless.port) <= before, 3), _gateway_connections(edge, endless.port)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_client_leaving_mid_upload_cancels_the_upstream_request(edge: Edge, chunked: bool) -> None:
    sink = edge.sink
    incomplete = len(sink.incomplete)
    complete = len(sink.complete)
    before, open_before = _baseline(edge, sink.port), sink.open
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: 50000000"
    piece = b"u" * 65536
    for _ in range(3):
        arrived = sink.body_bytes
        with socket.create_connection(("127.0.0.1", edge.gateway.port), timeout=5) as sock:
            sock.sendall(b"POST /sink/upload HTTP/1.1\r\nHost: a\r\n" + framing + b"\r\n\r\n")
            # Upload until the upstream is receiving the body, then vanish: mid-upload at both ends.
            deadline = time.monotonic() + 5
            while sink.body_bytes == arrived and time.monotonic() < deadline:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            assert sink.body_bytes > arrived, "the upload never reached the upstream"
        assert wait_until(lambda: sink.open <= open_before, 3), sink.open
    assert len(sink.complete) == complete  # no upload completed upstream ...
    assert len(sink.incomplete) == incomplete + 3  # ... each one was cut off there, mid-body
    assert wait_until(lambda: _baseline(edge, sink.port) <= before, 3), _gateway_connections(edge, sink.port)


def test_a_client_giving_up_on_a_hanging_upstream_frees_the_upstream_connection(edge: Edge) -> None:
    stuck = edge.stuck
    accepted = stuck.accepted
    with (
        httpx.Client(base_url=edge.gateway.url, timeout=0.3, trust_env=False) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.get("/stuck/x")
    assert stuck.accepted == accepted + 1  # the request did reach the upstream, which is holding it
    # The route would wait 30 s; the gateway must drop its upstream request as soon as the client is gone.
    assert wait_until(lambda: stuck.open == 0, 3), stuck.open
    assert wait_until(lambda: _baseline(edge, stuck.port) == 0, 3)
