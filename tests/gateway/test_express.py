"""The fast lane (gateway/express.py) against the ASGI path, on real sockets: the same request to two gateways that
differ only in ``fast_lane``, the raw responses and what the upstream received compared byte for byte (less the
date, the request id and the proof, which differ by nature), and the lane's own counter checked, so a case meant
for the lane cannot pass by taking the ASGI path unnoticed (issue 7: the fast path passes every test the slow path
passes; test_proxy_loopback.py runs its whole table on both too)."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from typing import Any

import httptools
import httpx
import pytest

from gateway import express
from gateway.app import create_app
from tests.gateway._fwd_fixtures import gateway_config
from tests.gateway._fwd_servers import Backend, LoopThread
from tests.gateway.conftest import AUDIENCE, EMAIL, ISSUER, JWKS_URL, JwksEndpoint, make_key, mint

pytestmark = pytest.mark.integration

KEY = make_key("EdDSA")
EMAIL_CLAIM = {"email": EMAIL}
OWNER = "user-123"
TOKEN = mint(KEY, sub=OWNER, ttl=3600)
OTHER = mint(KEY, sub="someone-else", ttl=3600)
FRESH = mint(KEY, sub=OWNER, ttl=3600, jti="fresh")  # verified on the lane: sent once to each gateway
FORGED = TOKEN[:-8] + ("AAAAAAAA" if not TOKEN.endswith("AAAAAAAA") else "BBBBBBBB")
UNKNOWN_KID = mint(make_key("EdDSA", kid="not-published"), sub=OWNER, ttl=3600)

# Canned upstream answers by the request path's last segment (see ScriptedKeepAlive).
ANSWERS = {
    "ok": b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok",
    "chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
    "empty-chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    "no-content": b"HTTP/1.1 204 No Content\r\nx-thing: 1\r\n\r\n",
    "not-modified": b'HTTP/1.1 304 Not Modified\r\netag: "v1"\r\n\r\n',
    "cookies": b"HTTP/1.1 200 OK\r\nset-cookie: a=1\r\nset-cookie: b=2; HttpOnly\r\ncontent-length: 0\r\n\r\n",
    "hop": b"HTTP/1.1 200 OK\r\nconnection: x-secret, keep-alive\r\nx-secret: 1\r\nkeep-alive: timeout=5\r\n"
    b"x-kept: 2\r\ncontent-length: 3\r\n\r\nhop",
    "interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 1\r\n\r\nc",
    "not-found": b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
    "close": b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nclose",
    "until-eof": b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nthe body ends with the connection",
    "control-char": b"HTTP/1.1 200 OK\r\nx-odd: a\x01b\r\ncontent-length: 2\r\n\r\nok",
    "garbage": b"this is not HTTP\r\n\r\n",
    "short": b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789",
    "status-999": b"HTTP/1.1 999 Odd\r\ncontent-length: 2\r\n\r\nok",
}
CLOSE_AFTER = {"close", "until-eof", "garbage", "short"}


class ScriptedKeepAlive:
    """A keep-alive upstream answering each request from :data:`ANSWERS` by its last path segment; records the
    request heads. ``flaky`` closes a reused connection without a word (the keep-alive race of RFC 9112 §9.3.1)
    and answers on a new one; ``hang`` never answers (``hung_up`` is set when the gateway closes that connection)."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.hung_up = threading.Event()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                target = head.split(b" ", 2)[1]
                name = target.partition(b"?")[0].rsplit(b"/", 1)[-1].decode()
                if name == "hang":
                    await reader.read()  # until the gateway gives up and closes
                    self.hung_up.set()
                    return
                if name == "flaky" and served:
                    return
                served += 1
                writer.write(ANSWERS.get(name, ANSWERS["ok"]))
                await writer.drain()
                if name in CLOSE_AFTER:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


class Pair:
    """Two gateways in one loop thread, the same routes and upstreams, fast lane on (``fast``) and off (``asgi``)."""

    def __init__(self) -> None:
        self.loop = LoopThread()
        self.scripted = ScriptedKeepAlive()
        self.backend = Backend(self.loop)
        scripted = f"http://127.0.0.1:{self.loop.start_raw(self.scripted)}"
        backend = f"http://127.0.0.1:{self.loop.start_uvicorn(self.backend)}"
        routes = [
            {"path": "/s/{rest:path}", "upstream": scripted, "auth": "public", "timeout": 0.5},
            {"path": "/b/{rest:path}", "upstream": backend, "auth": "public"},
            {"path": "/api/{user_id}/{rest:path}", "upstream": scripted, "auth": "owner"},
            {"path": "/me/{rest:path}", "upstream": scripted, "auth": "authenticated", "required_claims": EMAIL_CLAIM},
            {"path": "/relay/{rest:path}", "upstream": scripted, "auth": "authenticated", "forward_token": True},
            {"path": "/get-only", "upstream": scripted, "auth": "public", "methods": ["GET"]},
        ]
        issuers = [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks_url": JWKS_URL}]
        jwks = JwksEndpoint()
        jwks.serve(KEY)
        self.apps: dict[str, Any] = {}
        self.ports: dict[str, int] = {}
        for name, fast in (("fast", True), ("asgi", False)):
            config = gateway_config(routes, issuers=issuers, server={"fast_lane": fast})
            app = create_app(config, jwks_transport=httpx.MockTransport(jwks))
            self.apps[name] = app
            self.ports[name] = self.loop.start_uvicorn(app, timeout_keep_alive=5)


@pytest.fixture(scope="module")
def pair():
    pair = Pair()
    try:
        yield pair
    finally:
        pair.loop.close()


def converse(port: int, payload: bytes, responses: int = 1, *, head_only: bool = False, timeout: float = 5) -> bytes:
    """Send ``payload`` on a new connection and read ``responses`` responses (or until the connection ends)."""
    done: list[int] = []

    class Callbacks:
        def on_message_complete(self) -> None:
            done.append(1)

        def on_headers_complete(self) -> None:
            if head_only:
                done.append(1)

    parser = httptools.HttpResponseParser(Callbacks())
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        deadline = time.monotonic() + timeout
        while len(done) < responses and time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                received += b"<EOF>"
                break
            received += data
            try:
                parser.feed_data(data)
            except httptools.HttpParserError:
                break
    return received


_DATE = re.compile(rb"(?m)^date: [^\r]*\r$")
_REQUEST_ID = re.compile(rb"[0-9a-f]{32}")
_PROOF = re.compile(rb"(?m)^x-edge-proof: [^\r]*\r$")


def normalized(raw: bytes) -> bytes:
    return _PROOF.sub(b"x-edge-proof: <proof>\r", _REQUEST_ID.sub(b"<id>", _DATE.sub(b"date: <date>\r", raw)))


def request(method: str, path: str, *headers: str, version: str = "1.1", body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: gateway.test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


BEARER = f"Authorization: Bearer {TOKEN}"

# (id, request bytes, whether the fast gateway's lane admits it, number of responses, head only)
CASES = [
    ("content-length body", request("GET", "/s/ok"), True),
    ("chunked body, one read", request("GET", "/s/chunked"), True),
    ("empty chunked body", request("GET", "/s/empty-chunked"), True),
    ("204", request("GET", "/s/no-content"), True),
    ("304", request("GET", "/s/not-modified", 'If-None-Match: "v1"'), True),
    ("repeated set-cookie", request("GET", "/s/cookies"), True),
    ("hop-by-hop response headers", request("GET", "/s/hop"), True),
    ("1xx interim skipped", request("GET", "/s/interim"), True),
    ("upstream 404 passed on", request("GET", "/s/not-found"), True),
    ("upstream closes after answering", request("GET", "/s/close"), True),
    ("body until the upstream closes", request("GET", "/s/until-eof"), True),
    ("control character in a response header", request("GET", "/s/control-char"), True),
    ("garbage from the upstream: 502", request("GET", "/s/garbage"), True),
    ("body shorter than its length", request("GET", "/s/short"), True),
    ("status code out of range: 502", request("GET", "/s/status-999"), True),
    ("reused connection dropped: GET retried", request("GET", "/s/flaky"), True),
    ("reused connection dropped: POST not retried", request("POST", "/s/flaky"), True),
    ("upstream read timeout: 504", request("GET", "/s/hang"), True),
    ("query and encoded path", request("GET", "/s/a%20b/ok?x=1&y=%20&x=2"), True),
    ("encoded slash: 400", request("GET", "/s/a%2Fb/ok"), False),
    ("client identity headers dropped", request("GET", "/s/ok", "X-User-Id: admin", "X_User_Id: admin"), True),
    ("DELETE without a body", request("DELETE", "/s/ok"), True),
    ("streamed body from a real server", request("GET", "/b/big?300000"), True),
    ("chunked body from a real server", request("GET", "/b/hello"), True),
    ("owner, own path, cached token", request("GET", f"/api/{OWNER}/items", BEARER), True),
    ("owner, other's path, cached token: 403", request("GET", "/api/someone-else/items", BEARER), True),
    ("authenticated, required claim present", request("GET", "/me/profile", BEARER), True),
    ("token forwarded when the route says so", request("GET", "/relay/x", BEARER), True),
    (
        "owner, token not yet cached, key at hand",
        request("GET", f"/api/{OWNER}/items", f"Authorization: Bearer {FRESH}"),
        True,
    ),
    ("forged signature: 401", request("GET", f"/api/{OWNER}/items", f"Authorization: Bearer {FORGED}"), True),
    (
        "unknown kid: 401 after a refetch",
        request("GET", f"/api/{OWNER}/x", f"Authorization: Bearer {UNKNOWN_KID}"),
        False,
    ),
    ("missing token: 401", request("GET", f"/api/{OWNER}/items"), False),
    ("malformed token: 401", request("GET", f"/api/{OWNER}/items", "Authorization: Bearer abc"), True),
    ("two Authorization headers: 400", request("GET", "/me/profile", BEARER, BEARER), False),
    ("HEAD", request("HEAD", "/s/ok"), False),
    ("POST with a body", request("POST", "/s/ok", "Content-Length: 3", body=b"abc"), False),
    ("Expect: 100-continue", request("GET", "/s/ok", "Expect: 100-continue"), False),
    ("Connection: close", request("GET", "/s/ok", "Connection: close"), False),
    ("HTTP/1.0", request("GET", "/s/ok", version="1.0"), False),
    ("admin path", request("GET", "/livez"), False),
    ("no route: 404", request("GET", "/nowhere"), False),
    ("method not allowed on the route", request("DELETE", "/get-only"), False),
    ("unsafe path: 400", request("GET", "/s/..%2Fetc/ok"), False),
    ("absolute-form target", request("GET", "http://gateway.test/s/ok"), False),
]


def warm(pair: Pair, port: int) -> None:
    """Leave an idle connection to each upstream in the gateway's pool and the tokens in its cache."""
    for payload in (request("GET", "/s/ok"), request("GET", "/b/warm"), request("GET", f"/api/{OWNER}/x", BEARER)):
        assert b" 200 " in converse(port, payload)


@pytest.mark.parametrize(("payload", "on_lane"), [pytest.param(p, lane, id=name) for name, p, lane in CASES])
def test_the_fast_lane_answers_as_the_asgi_path_does(pair, payload, on_lane):
    head_only = payload.startswith(b"HEAD ")
    results = {}
    for name in ("asgi", "fast"):
        port, app = pair.ports[name], pair.apps[name]
        warm(pair, port)
        before, heads = app.express_requests, len(pair.scripted.heads)
        response = converse(port, payload, head_only=head_only)
        results[name] = (normalized(response), [normalized(head) for head in pair.scripted.heads[heads:]])
        admitted = app.express_requests - before
        assert admitted == (1 if on_lane and name == "fast" else 0), f"{name}: lane admitted {admitted}"
    assert results["fast"][0] == results["asgi"][0]  # the client sees the same bytes
    assert results["fast"][1] == results["asgi"][1]  # so does the upstream
    assert results["fast"][0]  # and it saw something


def test_pipelined_requests_are_answered_in_order(pair):
    payload = request("GET", "/s/chunked") + request("GET", "/s/ok") + request("GET", "/b/third")
    results = {}
    for name in ("asgi", "fast"):
        warm(pair, pair.ports[name])
        results[name] = normalized(converse(pair.ports[name], payload, responses=3))
    assert results["fast"] == results["asgi"]
    assert results["fast"].count(b"HTTP/1.1 200 OK") == 3
    assert results["fast"].index(b"abc") < results["fast"].index(b"\r\n\r\nok") < results["fast"].index(b"/b/third")


def test_a_keep_alive_connection_serves_many_requests_on_the_lane(pair):
    warm(pair, pair.ports["fast"])
    app = pair.apps["fast"]
    before = app.express_requests
    with socket.create_connection(("127.0.0.1", pair.ports["fast"]), timeout=5) as sock:
        for _ in range(50):  # one at a time: a pipelined request waits its turn on the ASGI path (uvicorn's queue)
            sock.sendall(request("GET", "/s/ok"))
            assert sock.recv(65536).endswith(b"\r\n\r\nok")
    assert app.express_requests - before == 50


def test_a_client_leaving_mid_exchange_closes_the_upstream_connection_and_is_logged_499(pair):
    app = pair.apps["fast"]
    warm(pair, pair.ports["fast"])
    pair.scripted.hung_up.clear()
    before = app.express_requests
    with socket.create_connection(("127.0.0.1", pair.ports["fast"])) as sock:
        sock.sendall(request("GET", "/s/hang"))
        deadline = time.monotonic() + 5
        while app.express_requests == before and time.monotonic() < deadline:
            time.sleep(0.01)
    # The route's timeout is 0.5 s: a connection closed sooner is the client's doing, not the 504's.
    assert pair.scripted.hung_up.wait(0.4)
    app.flush_metrics()
    text = app.metrics.render().decode()
    assert re.search(r'gateway_requests_total\{route="/s/\{rest:path\}",status="499"\} [1-9]', text)
    assert re.search(r"gateway_fast_lane_requests_total [1-9]", text)


def test_the_keep_alive_timeout_still_closes_an_idle_connection():
    loop = LoopThread()
    try:
        scripted = loop.start_raw(ScriptedKeepAlive())
        route = {"path": "/s/{rest:path}", "upstream": f"http://127.0.0.1:{scripted}", "auth": "public"}
        app = create_app(gateway_config([route], issuers=[]))
        port = loop.start_uvicorn(app, timeout_keep_alive=0.3)
        assert b" 200 " in converse(port, request("GET", "/s/ok"))  # leaves an idle upstream connection
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            for _ in range(3):  # each response moves the idle deadline
                sock.sendall(request("GET", "/s/ok"))
                assert b" 200 " in sock.recv(65536)
                time.sleep(0.2)
            started = time.monotonic()
            assert sock.recv(65536) == b""  # closed by the gateway
            assert 0.1 < time.monotonic() - started < 2
        assert app.express_requests >= 3
    finally:
        loop.close()


def read_all(sock: socket.socket, quiet: float = 0.5) -> bytes:
    """Everything the gateway sends until the connection ends or stays quiet for ``quiet`` seconds."""
    sock.settimeout(quiet)
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return received
        if not data:
            return received + b"<EOF>"
        received += data


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(request("GET", "/s/garbage"), request("HEAD", "/s/ok"), id="502 then HEAD"),
        pytest.param(request("GET", "/s/not-found"), request("HEAD", "/s/ok"), id="answered then HEAD"),
        pytest.param(request("GET", "/b/big?300000"), request("GET", "/s/chunked"), id="streamed then GET"),
        pytest.param(request("GET", "/api/someone-else/x", BEARER), request("HEAD", "/s/ok"), id="403 then HEAD"),
    ],
)
@pytest.mark.parametrize("split", [False, True], ids=["whole", "second head in two writes"])
def test_a_request_pipelined_behind_one_on_the_lane(pair, first, second, split):
    """The second request begins (replacing uvicorn's scope) or completes (replacing its cycle) while the first is
    still out on the lane: the first must be answered as itself, then the second and a third, on both gateways
    alike (the third is started by the second's completion: the lane must not have dropped the queued cycle)."""
    third = request("GET", "/s/ok")
    results = {}
    for name in ("asgi", "fast"):
        app = pair.apps[name]
        warm(pair, pair.ports[name])
        before = app.express_requests
        with socket.create_connection(("127.0.0.1", pair.ports[name]), timeout=5) as sock:
            if split:
                sock.sendall(first + second[:20])
                time.sleep(0.2)
                sock.sendall(second[20:] + third)
            else:
                sock.sendall(first + second + third)
            results[name] = normalized(read_all(sock))
        # The first one took the lane (later ones may too, when the first was answered before they arrived).
        assert (app.express_requests - before >= 1) if name == "fast" else (app.express_requests == before)
    assert results["fast"] == results["asgi"]
    assert results["fast"].count(b"HTTP/1.1 ") == 3


class _Flow:
    write_paused = False


class _Parser:
    def get_http_version(self) -> str:
        return "1.1"

    def should_keep_alive(self) -> bool:
        return True

    def get_method(self) -> bytes:
        return b"GET"


class _Protocol:
    """What express.admit reads of uvicorn's protocol, for the cases decided before the gateway is asked."""

    def __init__(self, **overrides: Any) -> None:
        self.url = b"/s/ok"
        self.pipeline: list[Any] = []
        self.cycle: Any = None
        self.flow = _Flow()
        self.parser = _Parser()
        self.headers = [(b"host", b"a")]
        self.client = ("127.0.0.1", 1)
        self.scheme = "http"
        self.scope: dict[str, Any] = {}
        for name, value in overrides.items():
            setattr(self, name, value)


class _Busy:
    response_complete = False


def _paused() -> _Flow:
    flow = _Flow()
    flow.write_paused = True
    return flow


class _NotToBeAsked:
    """Records being asked (admit turns an exception from the gateway into "take the ASGI path", so raising here
    would pass unnoticed)."""

    asked = False

    def express(self, *args: Any) -> None:
        self.asked = True


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"flow": _paused()}, id="the client is not reading: its answers would pile up"),
        pytest.param({"cycle": _Busy()}, id="a response still in progress"),
        pytest.param({"pipeline": [object()]}, id="requests queued"),
        pytest.param({"url": b"http://a/s/ok"}, id="absolute-form"),
        pytest.param({"url": b"/s/ok#frag"}, id="a fragment"),
        pytest.param({"headers": [(b"content-length", b"0")]}, id="a body"),
    ],
)
def test_admission_refuses_before_asking_the_gateway(overrides):
    gateway = _NotToBeAsked()
    assert express.admit(_Protocol(**overrides), gateway) is False
    assert not gateway.asked


def test_admission_asks_the_gateway_otherwise():
    class Asked(_NotToBeAsked):
        def express(self, *args: Any) -> None:
            self.args = args
            self.asked = True

    gateway = Asked()
    assert express.admit(_Protocol(), gateway) is False  # the gateway said None: the ASGI path
    assert gateway.args == ("GET", b"/s/ok", b"", [(b"host", b"a")], "127.0.0.1", "http")


def test_a_pipelined_body_reaches_its_own_request_after_the_lane_request_resumes(pair):
    """The second request's head is complete (uvicorn made it the current cycle and queued it) before the first,
    on the lane, times out and resumes; its body arrives after that. The resumed cycle must not take the second's
    place, or the body would go to the wrong request and the second would never be answered."""
    upload = b"POST /b/upload HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 5\r\n\r\n"
    results = {}
    for name in ("asgi", "fast"):
        app = pair.apps[name]
        warm(pair, pair.ports[name])
        before = app.express_requests
        with socket.create_connection(("127.0.0.1", pair.ports[name]), timeout=5) as sock:
            sock.sendall(request("GET", "/s/hang") + upload)  # the route's timeout is 0.5 s: a 504 then
            time.sleep(0.8)
            sock.sendall(b"hello")
            results[name] = normalized(read_all(sock, quiet=1.0))
        assert app.express_requests - before == (1 if name == "fast" else 0)
    assert results["fast"] == results["asgi"]
    assert results["fast"].startswith(b"HTTP/1.1 504 ")
    assert results["fast"].endswith(b"\r\n\r\n5") or b"\r\n1\r\n5\r\n0\r\n\r\n" in results["fast"]
