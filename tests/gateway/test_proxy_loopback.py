"""The gateway on real sockets (uvicorn on 127.0.0.1), where ASGITransport's buffering cannot hide anything:
streaming both ways, raw headers, upstream failures and timeouts, client disconnects, and ``--workers 2``."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from gateway.app import create_app
from gateway.metrics import FLUSH_INTERVAL
from gateway.upstream import HttpxUpstream
from gateway.upstream_aiohttp import AiohttpUpstream
from gateway.upstream_httptools import HttptoolsUpstream
from tests.gateway._fwd_fixtures import gateway_config
from tests.gateway._fwd_servers import (
    Backend,
    EndlessUpstream,
    HangingUpstream,
    LoopThread,
    ScriptedUpstream,
    free_port,
    wait_live,
)
from tests.gateway.conftest import PROOF_SECRET

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


# "httptools" runs with the fast lane on (the default: bodiless requests forwarded from callbacks, gateway/express.py),
# "httptools-asgi" with it off: every case here must pass on both (issue 7: the fast path passes what the slow one
# does).
UPSTREAMS = {
    "httpx": HttpxUpstream,
    "aiohttp": AiohttpUpstream,
    "httptools": HttptoolsUpstream,
    "httptools-asgi": HttptoolsUpstream,
}


class Stack:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.loop = LoopThread()
        self.backend = Backend(self.loop)
        self.hanging = HangingUpstream()
        self.endless = EndlessUpstream()
        backend = f"http://127.0.0.1:{self.loop.start_uvicorn(self.backend)}"
        hanging = f"http://127.0.0.1:{self.loop.start_raw(self.hanging)}"
        endless = f"http://127.0.0.1:{self.loop.start_raw(self.endless)}"
        refused = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        garbage = self.loop.start_raw(ScriptedUpstream(b"this is not HTTP\r\n\r\n"))
        short = self.loop.start_raw(ScriptedUpstream(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789"))
        chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nabcde\r\n"
        cut = self.loop.start_raw(ScriptedUpstream(chunked))  # no last chunk: the body never ends properly
        self.dropping = ScriptedUpstream(b"")  # reads the request head, closes without a word
        dropping = self.loop.start_raw(self.dropping)
        routes = [
            {"path": "/b/{rest:path}", "upstream": backend, "auth": "public", "timeout": 5},
            {"path": "/small/{rest:path}", "upstream": backend, "auth": "public", "max_body_bytes": 16},
            # A host name, not an address: cookie jars (aiohttp's) refuse to store cookies for bare IPs anyway.
            {"path": "/named/{rest:path}", "upstream": backend.replace("127.0.0.1", "localhost"), "auth": "public"},
            {"path": "/hang/{rest:path}", "upstream": hanging, "auth": "public", "timeout": 0.5},
            {"path": "/hang-long/{rest:path}", "upstream": hanging, "auth": "public", "timeout": 30},
            {"path": "/endless/{rest:path}", "upstream": endless, "auth": "public"},
            {"path": "/refused/{rest:path}", "upstream": refused, "auth": "public", "connect_timeout": 1},
            {"path": "/garbage/{rest:path}", "upstream": f"http://127.0.0.1:{garbage}", "auth": "public"},
            {"path": "/drop/{rest:path}", "upstream": f"http://127.0.0.1:{dropping}", "auth": "public"},
            {"path": "/short/{rest:path}", "upstream": f"http://127.0.0.1:{short}", "auth": "public"},
            {"path": "/cut/{rest:path}", "upstream": f"http://127.0.0.1:{cut}", "auth": "public"},
        ]
        self.backend_url = backend
        self.config = gateway_config(routes, issuers=[], server={"fast_lane": upstream != "httptools-asgi"})
        app = self.app = create_app(self.config, upstream=UPSTREAMS[upstream]())
        self.url = f"http://127.0.0.1:{self.loop.start_uvicorn(app)}"


@pytest.fixture(scope="module", params=sorted(UPSTREAMS))
def stack(request):
    stack = Stack(request.param)
    try:
        yield stack
    finally:
        stack.loop.close()


@pytest.fixture
def client(stack):
    with httpx.Client(base_url=stack.url, timeout=5, trust_env=False) as client:
        yield client


def test_the_fast_lane_is_on_only_where_configured(stack, client):
    """The cases here run on the fast lane with "httptools" (where a bodiless request finds an idle connection) and
    never with "httptools-asgi" or the other clients: without this a broken lane switch would pass unnoticed."""
    before = stack.app.express_requests
    for _ in range(3):
        assert client.get("/b/lane").status_code == 200
    lane = stack.app.express_requests - before
    assert lane >= (2 if stack.upstream == "httptools" else 0)
    assert lane == 0 or stack.upstream == "httptools"


def test_response_streams_before_the_upstream_finishes(stack, client):
    with client.stream("GET", "/b/slow-stream") as response:
        chunks = response.iter_raw()
        # The backend is parked until released: this chunk can only arrive if the gateway does not buffer.
        assert next(chunks) == b"first"
        stack.backend.release()
        assert b"".join(chunks) == b"second"


def test_request_body_streams_before_the_client_finishes(stack, client):
    waited = []

    def body():
        yield b"a" * 1000
        # The gateway must pass the first chunk on before the client sends the rest.
        waited.append(stack.backend.first_chunk.wait(5))
        yield b"b" * 1000

    response = client.post("/b/upload", content=body())
    assert response.status_code == 200
    assert response.text == "2000"
    assert waited == [True]


def test_large_bodies_arrive_intact(client):
    size = 8 * 1024 * 1024
    with client.stream("GET", f"/b/big?{size}") as response:
        digest = hashlib.sha256()
        received = 0
        for chunk in response.iter_raw():
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == hashlib.sha256((bytes(range(256)) * 256) * (size // 65536)).hexdigest()


def test_multiple_set_cookie_headers_survive(client):
    response = client.get("/b/cookies")
    assert response.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; HttpOnly", "c=3"]


def test_the_shared_client_replays_no_cookie(stack):
    # Two different clients (no jar of their own): the second must not receive what the first was given.
    with httpx.Client(base_url=stack.url, timeout=5, trust_env=False) as first:
        assert first.get("/named/cookies").headers.get_list("set-cookie")
    with httpx.Client(base_url=stack.url, timeout=5, trust_env=False) as second:
        second.get("/named/after-cookies")
    path, headers = stack.backend.requests[-1]
    assert path == "/named/after-cookies"
    assert b"cookie" not in dict(headers)


def test_compressed_bodies_pass_through_untouched(client):
    with client.stream("GET", "/b/gzip", headers={"accept-encoding": "gzip"}) as response:
        raw = b"".join(response.iter_raw())
        assert response.headers["content-encoding"] == "gzip"
        assert response.headers["content-length"] == str(len(Backend.GZIPPED))
    assert raw == Backend.GZIPPED


def test_connection_refused_is_502(client):
    response = client.post("/refused/x", content=b"data")
    assert response.status_code == 502
    assert response.json()["error"] == "bad_gateway"


def test_an_upstream_speaking_garbage_is_502(client):
    response = client.get("/garbage/x")
    assert response.status_code == 502
    assert response.json()["error"] == "bad_gateway"


@pytest.mark.parametrize(
    ("method", "content", "most"),
    [
        pytest.param("POST", b"data", 1, id="POST: never retried"),
        pytest.param("PATCH", b"data", 1, id="PATCH: never retried"),
        pytest.param("POST", None, 1, id="POST without a body: never retried"),
        pytest.param("GET", None, 2, id="GET: at most one retry"),
    ],
)
def test_an_upstream_dropping_the_connection_is_502_and_non_idempotent_requests_are_not_retried(
    stack, client, method, content, most
):
    before = stack.dropping.requests
    response = client.request(method, "/drop/x", content=content)
    assert response.status_code == 502
    assert 1 <= stack.dropping.requests - before <= most


@pytest.mark.parametrize("path", [pytest.param("/short/x", id="Content-Length"), pytest.param("/cut/x", id="chunked")])
def test_an_upstream_dying_mid_body_aborts_the_client_connection(client, path):
    # The head is already out, so a 502 is impossible: the client must see a broken response, never a short
    # body that looks complete.
    with pytest.raises(httpx.RemoteProtocolError), client.stream("GET", path) as response:
        assert response.status_code == 200
        response.read()


def test_hanging_upstream_is_504_within_the_route_timeout(client):
    started = time.monotonic()
    response = client.get("/hang/x")
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["error"] == "gateway_timeout"
    assert 0.4 <= elapsed < 2.0


def test_client_disconnect_frees_the_upstream_connection(stack):
    with (
        httpx.Client(base_url=stack.url, timeout=5, trust_env=False) as client,
        client.stream("GET", "/endless/x") as response,
    ):
        assert next(response.iter_raw())
    # Closing an unfinished response closes the client's connection; the gateway must close its upstream one.
    assert stack.endless.closed.wait(3)


def test_client_giving_up_on_a_slow_upstream_frees_the_upstream_connection(stack):
    stack.hanging.closed.clear()
    with httpx.Client(base_url=stack.url, timeout=0.3, trust_env=False) as client, pytest.raises(httpx.ReadTimeout):
        client.get("/hang-long/x")
    # The route would wait 30 s; the client left after 0.3 s, and so must the gateway's upstream connection.
    assert stack.hanging.closed.wait(3)


def test_streamed_upload_over_the_limit_is_refused(stack):
    def body():
        for _ in range(64):
            yield b"x" * 1024

    with httpx.Client(base_url=stack.url, timeout=5, trust_env=False) as client:
        try:
            response = client.post("/small/upload", content=body())
        except httpx.TransportError:
            # The gateway may answer 413 and close while the client is still writing: the request was not
            # forwarded either way, which is what the backend's request log shows below.
            response = None
    if response is not None:
        assert response.status_code == 413
    # The head may have gone upstream already (the body streams), but the backend never gets a whole body.
    time.sleep(0.2)
    assert not any(path == "/small/upload" for path, _ in stack.backend.uploads)


def test_owned_headers_reach_the_backend_once(stack, client):
    client.get("/b/headers", headers=[("x-user-id", "admin"), ("X_User_Id", "admin"), ("x-request-id", "mine")])
    path, headers = stack.backend.requests[-1]
    assert path == "/b/headers"
    names = [name for name, _ in headers]
    assert names.count(b"x-request-id") == 1
    assert b"x-user-id" not in names and b"x_user_id" not in names
    assert dict(headers)[b"host"] == stack.backend_url.removeprefix("http://").encode()


def test_the_exact_target_and_only_the_clients_headers_reach_the_backend(stack):
    target = b"/b/caf%C3%A9/%40me:x,y=z?q=a%20b&q=c+d&e=%2F&f"
    request = b"POST " + target + b" HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 4\r\nX-Custom: 1\r\n\r\nbody"
    assert _raw_status(stack.url, request) == 200
    assert stack.backend.targets[-1] == target
    _, headers = stack.backend.requests[-1]
    names = [name for name, _ in headers]
    # Nothing the client did not send, apart from the gateway's own headers and the upstream Host.
    assert sorted(set(names)) == sorted(
        {
            b"host",
            b"content-length",
            b"x-custom",
            b"x-forwarded-for",
            b"x-forwarded-proto",
            b"x-forwarded-host",
            b"x-request-id",
            b"x-edge-proof",
        }
    )
    assert dict(headers)[b"content-length"] == b"4"


def test_a_chunked_upload_is_forwarded_chunked(stack):
    head = b"POST /b/upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    request = head + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert _raw_status(stack.url, request) == 200
    assert stack.backend.uploads[-1] == ("/b/upload", 5)
    _, headers = stack.backend.requests[-1]
    assert dict(headers).get(b"transfer-encoding") == b"chunked"
    assert b"content-length" not in dict(headers)


def _raw_status(url: str, request: bytes) -> int:
    """Send bytes no HTTP client library would, return the status code answered."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        head = sock.recv(65536)
    return int(head.split(b" ", 2)[1])


HOSTILE = [
    pytest.param(b"GET http://evil.test/b/x HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="absolute-form"),
    pytest.param(b"GET http://evil.test/b/x?q=1 HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="absolute-form+query"),
    pytest.param(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="asterisk-form"),
    pytest.param(b"GET //evil.test/b/x HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="network-path"),
    pytest.param(b"GET /b/%2e%2e/x HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="encoded dot-dot"),
    pytest.param(
        b"POST /b/upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        400,
        id="transfer coding other than chunked",
    ),
    pytest.param(
        b"POST /b/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        id="Content-Length with Transfer-Encoding",
    ),
    pytest.param(b"GET /b/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="two Host headers"),
    pytest.param(b"GET /b/x HTTP/1.1\r\nHost: a\r\nX-A: \xff\xfe\r\n\r\n", 200, id="obs-text header value"),
    pytest.param(b"GET /b/x HTTP/1.0\r\n\r\n", 200, id="HTTP/1.0 without Host"),
]


@pytest.mark.parametrize(("request_bytes", "status"), HOSTILE)
def test_hostile_requests_get_4xx_never_5xx(stack, request_bytes, status):
    assert _raw_status(stack.url, request_bytes) == status


# --- several workers ---------------------------------------------------------------------------------------------


def _requests_by_pid(directory: Path, route: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for file in directory.glob("counter_*.db"):
        pid = file.stem.removeprefix("counter_")
        for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(file)):
            _metric, sample, labels, _help = json.loads(key)
            if sample == "gateway_requests_total" and labels.get("route") == route:
                counts[pid] = counts.get(pid, 0) + value
    return counts


@pytest.fixture(scope="module")
def backend_url():
    """A backend of its own: the workers test runs the CLI once, whichever upstream client ``stack`` is on."""
    loop = LoopThread()
    try:
        yield f"http://127.0.0.1:{loop.start_uvicorn(Backend(loop))}"
    finally:
        loop.close()


def test_two_workers_serve_and_metrics_are_summed(backend_url, tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(f'[[routes]]\npath = "/b/{{rest:path}}"\nupstream = "{backend_url}"\nauth = "public"\n')
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "EDGE_PROOF_SECRET": PROOF_SECRET,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "PYTHONUNBUFFERED": "1",
    }
    argv = [sys.executable, "-m", "gateway", "--config", str(config), "--port", str(port), "--workers", "2"]
    argv += ["--graceful-timeout", "2", "--no-access-log"]
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_live(url, process)
        sent = 0

        def one(_: int) -> int:
            # A fresh connection per request, so the kernel spreads them over both workers' accept loops.
            with httpx.Client(timeout=5, trust_env=False) as client:
                return client.get(f"{url}/b/slow?delay=0.05").status_code

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            for _ in range(20):
                statuses = list(pool.map(one, range(16)))
                assert statuses == [200] * 16
                sent += 16
                if len(_requests_by_pid(metrics_dir, "/b/{rest:path}")) >= 2:
                    break
        by_pid = _requests_by_pid(metrics_dir, "/b/{rest:path}")
        assert len(by_pid) == 2, f"only one worker served: {by_pid}"
        # Whichever worker answers the scrape counts both workers' requests: its own at once, the other's once that
        # worker's timer has flushed its batched counters (gateway/metrics.py FLUSH_INTERVAL).
        deadline = time.monotonic() + 5 * FLUSH_INTERVAL
        while True:
            scraped = httpx.get(f"{url}/metrics", timeout=5, trust_env=False).text
            pattern = r'^gateway_requests_total\{route="/b/\{rest:path\}",status="200"\} (\S+)$'
            match = re.search(pattern, scraped, re.M)
            assert match is not None, scraped
            if float(match.group(1)) == sent or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert float(match.group(1)) == sent
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(5)
            process.stderr.close()
    assert process.returncode == 0
