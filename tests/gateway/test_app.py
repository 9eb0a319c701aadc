"""The request pipeline in-process: refusals, identity headers and proof, forwarding, errors, health, logs.

The app runs with its real token verifier and JWKS cache (keys served through ``httpx.MockTransport``) and its
real httpx upstream client on a MockTransport backend (:class:`UpstreamRecorder`). Streaming and real sockets
are in test_proxy_loopback.py (ASGITransport buffers whole bodies).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import time

import httpx
import pytest

from gateway.errors import BadGateway
from gateway.proof import ProofVerifier, parse_secrets
from tests.gateway._fwd_fixtures import (
    UPSTREAM,
    UpstreamRecorder,
    call_asgi,
    default_routes,
    gateway_config,
    running_gateway,
    streamed,
)
from tests.gateway.conftest import EMAIL, PROOF_SECRET, SUBJECT, make_key, mint, unsigned

pytestmark = pytest.mark.anyio

OWNER_PATH = f"/api/{SUBJECT}/tasks"


@pytest.fixture
def endpoint(jwks_endpoint, eddsa_key):
    jwks_endpoint.serve(eddsa_key)
    return jwks_endpoint


@pytest.fixture
def recorder():
    return UpstreamRecorder()


@pytest.fixture
async def gateway(endpoint, recorder):
    async with running_gateway(gateway_config(), jwks_endpoint=endpoint, recorder=recorder) as running:
        yield running


@pytest.fixture
def client(gateway):
    return gateway[1]


@pytest.fixture
def token(eddsa_key):
    return mint(eddsa_key)


def proof_of(seen):
    return ProofVerifier(parse_secrets(PROOF_SECRET)).verify(seen.method, seen.target.decode("latin-1"), seen.headers)


def bearer(token: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {token}".encode())


# --- refusals ------------------------------------------------------------------------------------------------------

REALM = 'Bearer realm="gateway"'
REFUSALS = [
    pytest.param("GET", OWNER_PATH, lambda key: [], 401, "missing_token", REALM, id="no token"),
    pytest.param(
        "GET", OWNER_PATH, lambda key: [(b"authorization", b"Basic dTpw")], 401, "missing_token", REALM, id="Basic"
    ),
    pytest.param(
        "GET",
        OWNER_PATH,
        lambda key: [bearer("abc.def.ghi")],
        401,
        "invalid_token",
        REALM + ', error="invalid_token", error_description="the token is not a well-formed JWT"',
        id="garbage token",
    ),
    pytest.param(
        "GET",
        OWNER_PATH,
        lambda key: [bearer(mint(key, now=time.time() - 3600, ttl=60))],
        401,
        "invalid_token",
        REALM + ', error="invalid_token", error_description="the token has expired"',
        id="expired token",
    ),
    pytest.param(
        "GET",
        OWNER_PATH,
        lambda key: [bearer(mint(make_key("EdDSA", "ed-1")))],
        401,
        "invalid_token",
        REALM + ', error="invalid_token", error_description="the token\'s signature is invalid"',
        id="forged signature, known kid",
    ),
    pytest.param(
        "GET",
        OWNER_PATH,
        lambda key: [bearer(unsigned({"alg": "none", "kid": "ed-1"}, {"sub": SUBJECT, "iss": "x"}))],
        401,
        "invalid_token",
        None,
        id="alg none",
    ),
    pytest.param(
        "GET",
        "/api/someone-else/tasks",
        lambda key: [bearer(mint(key))],
        403,
        "insufficient_scope",
        REALM + ', error="insufficient_scope", error_description="the token\'s subject does not own this resource"',
        id="owner mismatch",
    ),
    pytest.param(
        "GET",
        f"/api/{SUBJECT.upper()}/tasks",
        lambda key: [bearer(mint(key))],
        403,
        "insufficient_scope",
        None,
        id="owner differs only in case",
    ),
    pytest.param(
        "GET",
        OWNER_PATH,
        lambda key: [bearer(mint(key)), bearer(mint(key))],
        400,
        "invalid_request",
        None,
        id="two Authorization headers",
    ),
    pytest.param(
        "GET",
        OWNER_PATH,
        lambda key: [bearer(mint(key, email="\u5c71\u7530@example.jp"))],
        401,
        "invalid_token",
        None,
        id="claim that cannot travel in a header",
    ),
    pytest.param("GET", "/nowhere", lambda key: [], 404, "not_found", None, id="no route"),
    pytest.param("POST", "/read-only", lambda key: [], 405, "method_not_allowed", None, id="method not allowed"),
    pytest.param("GET", "/public/%2e%2e/admin", lambda key: [], 400, "unsafe_path", None, id="encoded dot segment"),
    pytest.param("GET", "/public/a%2Fb", lambda key: [], 400, "unsafe_path", None, id="encoded slash"),
    pytest.param("GET", "/public/a%5cb", lambda key: [], 400, "unsafe_path", None, id="encoded backslash"),
    pytest.param("GET", "/public//x", lambda key: [], 400, "unsafe_path", None, id="empty segment"),
    pytest.param("GET", "/public/./x", lambda key: [], 400, "unsafe_path", None, id="dot segment"),
    pytest.param("GET", "/public/../api/x", lambda key: [], 400, "unsafe_path", None, id="dot-dot segment"),
    pytest.param("GET", "/public/a%00", lambda key: [], 400, "unsafe_path", None, id="encoded NUL"),
    pytest.param("GET", "/public/a;b", lambda key: [], 400, "unsafe_path", None, id="semicolon"),
    pytest.param("GET", "/public/%ff", lambda key: [], 400, "unsafe_path", None, id="not UTF-8"),
    pytest.param("GET", "http://evil.test/public/x", lambda key: [], 400, "unsafe_path", None, id="absolute-form"),
    pytest.param(
        "GET", f"/api/{SUBJECT}%2F../other/x", lambda key: [bearer(mint(key))], 400, "unsafe_path", None, id="owner+%2F"
    ),
    pytest.param(
        "POST",
        "/public/x",
        lambda key: [(b"content-length", b"3"), (b"transfer-encoding", b"chunked")],
        400,
        "conflicting_framing",
        None,
        id="Content-Length with Transfer-Encoding",
    ),
    pytest.param(
        "POST", "/small/x", lambda key: [(b"content-length", b"17")], 413, "payload_too_large", None, id="declared 413"
    ),
    pytest.param("POST", "/livez", lambda key: [], 405, "method_not_allowed", None, id="POST to a health path"),
]


@pytest.mark.parametrize(("method", "path", "headers", "status", "error", "challenge"), REFUSALS)
async def test_refusals(gateway, recorder, eddsa_key, method, path, headers, status, error, challenge):
    app, _ = gateway
    sent = headers(eddsa_key)
    result = await call_asgi(app, method=method, raw_path=path.encode(), headers=sent, body_chunks=[b"abc"])
    assert result.status == status
    body = json.loads(result.body)
    assert set(body) == {"error", "message", "request_id"}
    assert body["error"] == error
    assert body["request_id"] == result.header("x-request-id")
    assert result.header("content-type") == "application/json"
    if challenge is not None:
        assert result.header("www-authenticate") == challenge
    if status == 401:
        assert result.header("www-authenticate").startswith(REALM)
    if status == 405:
        assert result.header("allow")
    assert recorder.seen == []  # a refusal never reaches the upstream
    for name, value in sent:
        if name == b"authorization":
            credentials = value.split(b" ", 1)[1]
            assert credentials not in result.body
            assert all(credentials not in v for _, v in result.headers)


async def test_missing_raw_path_is_a_server_fault_not_a_guess(gateway, recorder):
    app, _ = gateway
    result = await call_asgi(app, raw_path=None)
    assert result.status == 500
    assert json.loads(result.body)["error"] == "internal_error"
    assert recorder.seen == []


# --- identity headers and the proof --------------------------------------------------------------------------------

SPOOFED = [
    ("X-User-Id", "admin"),
    ("x-user-id", "admin2"),
    ("X_User_Id", "admin3"),
    ("X-User-Email", "root@evil.test"),
    ("x_user_email", "root2@evil.test"),
    ("X-Request-Id", "chosen-id"),
    ("x_request_id", "chosen-id-2"),
    ("X-Edge-Proof", "v1;t=1;s=AAAA"),
    ("x_edge_proof", "v1;t=2;s=BBBB"),
    ("Connection", "x-secret-hop"),
    ("X-Secret-Hop", "1"),
]


async def test_owner_route_forwards_exactly_one_of_each_owned_header_and_a_valid_proof(client, recorder, token):
    response = await client.get(OWNER_PATH + "?page=2", headers=[("authorization", f"Bearer {token}"), *SPOOFED])
    assert response.status_code == 200
    seen = recorder.last
    assert seen.target == f"{OWNER_PATH}?page=2".encode()
    assert seen.values("x-user-id") == [SUBJECT]
    assert seen.values("x-user-email") == [EMAIL]
    assert seen.values("x-request-id") == [response.headers["x-request-id"]]
    assert len(seen.values("x-edge-proof")) == 1
    names = seen.names()
    assert not any("_" in name for name in names)
    assert "x-secret-hop" not in names
    assert "authorization" not in names  # the token is not forwarded on protected routes
    identity = proof_of(seen)
    assert (identity.user_id, identity.email, identity.request_id) == (SUBJECT, EMAIL, seen.values("x-request-id")[0])


async def test_public_route_passes_anonymous_requests_with_a_proof(client, recorder):
    response = await client.get("/public/page", headers=SPOOFED)
    assert response.status_code == 200
    seen = recorder.last
    assert "x-user-id" not in seen.names()
    assert "x-user-email" not in seen.names()
    assert seen.values("x-request-id") == [response.headers["x-request-id"]]
    identity = proof_of(seen)
    assert (identity.user_id, identity.email) == (None, None)


async def test_public_route_forwards_authorization_for_the_service_behind_it(client, recorder, token):
    await client.get("/public/get-session", headers={"authorization": f"Bearer {token}"})
    assert recorder.last.values("authorization") == [f"Bearer {token}"]
    assert "x-user-id" not in recorder.last.names()  # public routes vouch for no one, token or not


@pytest.mark.parametrize(
    ("path", "forwarded"),
    [pytest.param("/me/profile", False, id="authenticated"), pytest.param("/relay/x", True, id="forward_token")],
)
async def test_authenticated_routes(client, recorder, token, path, forwarded):
    response = await client.get(path, headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert recorder.last.values("x-user-id") == [SUBJECT]
    assert recorder.last.values("authorization") == ([f"Bearer {token}"] if forwarded else [])


async def test_the_proof_covers_the_exact_encoded_target(client, recorder):
    target = "/public/caf%C3%A9/%40me?q=a%20b&q=c+d"
    response = await client.get(httpx.URL(target))
    assert response.status_code == 200
    assert recorder.last.target == target.encode()
    assert proof_of(recorder.last).user_id is None


@pytest.mark.parametrize(
    ("peer", "trusted", "sent", "expected"),
    [
        pytest.param(("203.0.113.7", 5000), [], "1.2.3.4", "203.0.113.7", id="untrusted peer"),
        pytest.param(("10.0.0.5", 5000), ["10.0.0.0/8"], "1.2.3.4", "1.2.3.4, 10.0.0.5", id="trusted proxy"),
        pytest.param(("10.0.0.5", 5000), ["192.0.2.0/24"], "1.2.3.4", "10.0.0.5", id="proxy not in the list"),
    ],
)
async def test_x_forwarded_for_from_the_real_peer(endpoint, peer, trusted, sent, expected):
    recorder = UpstreamRecorder()
    config = gateway_config(server={"trusted_proxies": trusted})
    async with running_gateway(config, jwks_endpoint=endpoint, recorder=recorder, peer=peer) as (_, client):
        await client.get("/public/x", headers={"x-forwarded-for": sent, "x-forwarded-proto": "https"})
    assert recorder.last.values("x-forwarded-for") == [expected]
    assert recorder.last.values("x-forwarded-proto") == (["https"] if trusted and expected != peer[0] else ["http"])
    assert recorder.last.values("x-forwarded-host") == ["gateway.test"]


# --- forwarding ------------------------------------------------------------------------------------------------------


async def test_response_passes_through_raw(client, recorder):
    payload = gzip.compress(b"hello " * 100)
    recorder.respond = lambda request: streamed(
        201,
        [payload[:10], payload[10:]],
        [
            ("content-type", "text/plain"),
            ("content-encoding", "gzip"),
            ("set-cookie", "a=1; Path=/; HttpOnly"),
            ("set-cookie", "b=2; Path=/"),
            ("Set-Cookie", "c=3, d=4; Expires=Wed, 21 Oct 2037 07:28:00 GMT"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("x-request-id", "upstream-id"),
        ],
    )
    async with client.stream("GET", "/public/file") as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
        headers = response.headers
    assert response.status_code == 201
    assert raw == payload  # compressed bytes untouched: Content-Encoding tells the truth
    assert headers.get_list("set-cookie") == [
        "a=1; Path=/; HttpOnly",
        "b=2; Path=/",
        "c=3, d=4; Expires=Wed, 21 Oct 2037 07:28:00 GMT",
    ]
    assert headers["content-encoding"] == "gzip"
    assert "x-hop" not in headers and "keep-alive" not in headers
    assert headers.get_list("x-request-id") == [recorder.last.values("x-request-id")[0]]


async def test_the_shared_client_keeps_no_cookies_and_adds_no_headers(client, recorder):
    recorder.respond = lambda request: streamed(200, [b"x"], [("set-cookie", "session=alice-secret; Path=/")])
    await client.get("/public/login")
    client.cookies.clear()  # the test's own client keeps a jar; the gateway's must not
    recorder.respond = None
    await client.get("/public/next")
    assert "cookie" not in recorder.last.names()  # alice's cookie is not replayed to the next client
    added = {"user-agent", "accept", "accept-encoding", "connection"} & set(recorder.last.names())
    assert not added  # httpx's defaults would make upstreams compress for clients that never asked


async def test_request_body_and_method_are_forwarded(client, recorder):
    response = await client.post("/public/echo", content=b"x" * 1000, headers={"content-type": "text/plain"})
    assert response.status_code == 200
    assert recorder.last.method == "POST"
    assert recorder.last.body == b"x" * 1000
    assert recorder.last.values("content-length") == ["1000"]


async def test_streamed_request_body_over_the_limit_is_413(client, recorder):
    async def chunks():
        for _ in range(4):
            yield b"0123456789"

    response = await client.post("/small/upload", content=chunks())
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


async def test_body_at_the_limit_passes(client, recorder):
    response = await client.post("/small/upload", content=b"x" * 16)
    assert response.status_code == 200
    assert recorder.last.body == b"x" * 16


UPSTREAM_FAILURES = [
    pytest.param(httpx.ConnectError("refused"), 502, "bad_gateway", id="connection refused"),
    pytest.param(httpx.RemoteProtocolError("garbage"), 502, "bad_gateway", id="protocol error"),
    pytest.param(httpx.ReadError("reset"), 502, "bad_gateway", id="connection reset"),
    pytest.param(httpx.ConnectTimeout("slow connect"), 504, "gateway_timeout", id="connect timeout"),
    pytest.param(httpx.ReadTimeout("slow answer"), 504, "gateway_timeout", id="read timeout"),
    pytest.param(httpx.PoolTimeout("pool full"), 503, "service_unavailable", id="pool exhausted"),
]


@pytest.mark.parametrize(("error", "status", "code"), UPSTREAM_FAILURES)
async def test_upstream_failures(client, recorder, error, status, code):
    recorder.error = error
    response = await client.post("/public/x", content=b"body")
    assert response.status_code == status
    assert response.json()["error"] == code
    assert len(recorder.seen) == 1  # never retried, idempotent or not


class _ExplodingUpstream:
    async def send(self, *args, **kwargs):
        raise RuntimeError("boom: internal detail")

    async def aclose(self):
        return None


async def test_unexpected_errors_are_500_with_the_same_shape(endpoint, caplog):
    config = gateway_config()
    async with running_gateway(config, jwks_endpoint=endpoint, upstream=_ExplodingUpstream()) as (_, client):
        with caplog.at_level(logging.ERROR, logger="gateway"):
            response = await client.get("/public/x")
    assert response.status_code == 500
    body = response.json()
    assert body == {"error": "internal_error", "message": "internal gateway error", "request_id": body["request_id"]}
    assert "boom" not in response.text
    assert any("boom" in (record.exc_text or "") or record.exc_info for record in caplog.records)


class _FailingMidStream:
    """Headers arrive, then the upstream dies: the response cannot be turned into a 502 any more."""

    async def send(self, *args, **kwargs):
        return self

    status = 200
    headers = [(b"content-type", b"text/plain")]

    def whole_body(self):
        return None  # the body is still arriving

    async def aiter_raw(self):
        yield b"first"
        raise BadGateway()

    closed = False

    async def aclose(self):
        type(self).closed = True


async def test_failure_after_the_head_aborts_instead_of_answering_twice(gateway):
    app, _ = gateway
    app.upstream = _FailingMidStream()
    with pytest.raises(BadGateway):
        await call_asgi(app, raw_path=b"/public/x")
    assert _FailingMidStream.closed


# --- health, metrics, logs -------------------------------------------------------------------------------------------


async def test_health_endpoints(client, recorder):
    assert (await client.get("/livez")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ok"}
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "gateway_requests_total" in metrics.text
    assert recorder.seen == []


async def test_readyz_fails_while_an_issuer_has_no_keys(jwks_endpoint, recorder, eddsa_key):
    jwks_endpoint.status = 500
    async with running_gateway(gateway_config(), jwks_endpoint=jwks_endpoint, recorder=recorder) as (_, client):
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        assert (await client.get("/livez")).status_code == 200
        refused = await client.get(OWNER_PATH, headers={"authorization": f"Bearer {mint(eddsa_key)}"})
        assert refused.status_code == 503
        public = await client.get("/public/x")
        assert public.status_code == 200  # public routes need no keys
    assert len(recorder.seen) == 1


async def test_health_paths_are_configurable_and_then_free_for_routes(endpoint, recorder):
    routes = [{"path": "/livez", "upstream": "http://upstream.test:8002", "auth": "public"}]
    config = gateway_config(routes, health={"livez_path": "/_gateway/livez", "metrics_path": ""})
    async with running_gateway(config, jwks_endpoint=endpoint, recorder=recorder) as (_, client):
        assert (await client.get("/_gateway/livez")).json() == {"status": "ok"}
        assert (await client.get("/livez")).text == "ok"  # now a route: forwarded
        assert (await client.get("/metrics")).status_code == 404
    assert [seen.target for seen in recorder.seen] == [b"/livez"]


async def test_one_access_log_line_per_request_without_the_token(client, token, caplog):
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        ok = await client.get(OWNER_PATH, headers={"authorization": f"Bearer {token}"})
        forged = mint(make_key("EdDSA", "ed-1"))
        bad = await client.get(OWNER_PATH, headers={"authorization": f"Bearer {forged}"})
        await client.get("/nowhere")
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "gateway.access"]
    assert len(lines) == 3
    assert lines[0]["request_id"] == ok.headers["x-request-id"]
    assert {k: lines[0][k] for k in ("method", "route", "status", "user", "auth")} == {
        "method": "GET",
        "route": "/api/{user_id}/{rest:path}",
        "status": 200,
        "user": SUBJECT,
        "auth": "valid",
    }
    assert isinstance(lines[0]["latency_ms"], float)
    assert lines[1]["request_id"] == bad.headers["x-request-id"]
    assert (lines[1]["status"], lines[1]["user"], lines[1]["auth"], lines[1]["reason"]) == (
        401,
        None,
        "invalid",
        "bad_signature",
    )
    assert (lines[2]["route"], lines[2]["status"], lines[2]["error"]) == ("(unmatched)", 404, "not_found")
    assert token not in caplog.text
    assert forged not in caplog.text
    assert forged.split(".")[2] not in caplog.text


async def test_websocket_upgrades_are_refused(gateway):
    app, _ = gateway
    sent = []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    await app({"type": "websocket", "path": "/public/ws", "raw_path": b"/public/ws", "headers": []}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_request_ids_are_random_hex_unique_and_not_shared_with_a_forked_child():
    from gateway.app import _RequestIds

    ids = _RequestIds()
    drawn = [ids() for _ in range(1000)]  # several batches
    assert all(len(value) == 32 and int(value, 16) >= 0 for value in drawn)
    assert len(set(drawn)) == len(drawn)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what would its next id be?
        os.write(write, ids().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child != ids()


async def test_required_claims_are_enforced_on_cached_tokens_too(endpoint, recorder, eddsa_key):
    """Cache entries keep only the claims some route requires (tokens.py keep_claims, issue 7): those must still
    decide, on the first request and on every cached one after it."""
    admin = {"path": "/admin/{rest:path}", "upstream": UPSTREAM, "auth": "authenticated"}
    admin["required_claims"] = {"role": "admin"}
    config = gateway_config([*default_routes(), admin])
    async with running_gateway(config, jwks_endpoint=endpoint, recorder=recorder) as (_, client):
        for role, status in (("admin", 200), ("user", 403)):
            headers = {"authorization": f"Bearer {mint(eddsa_key, role=role, tenant='t1')}"}
            for _ in range(2):  # the second request is answered from the verified-token cache
                assert (await client.get("/admin/x", headers=headers)).status_code == status


async def test_batched_metrics_reach_prometheus_on_the_apps_timer(endpoint, recorder, eddsa_key, monkeypatch):
    """Per-request counters are batched (gateway/metrics.py); the app's timer flushes them without a scrape, so
    another worker's scrape sees them within FLUSH_INTERVAL. The interval is shortened here to keep the test fast."""
    import asyncio

    import gateway.app as app_module

    monkeypatch.setattr(app_module, "FLUSH_INTERVAL", 0.05)
    async with running_gateway(gateway_config(), jwks_endpoint=endpoint, recorder=recorder) as (app, client):
        assert (await client.get(OWNER_PATH, headers={"authorization": f"Bearer {mint(eddsa_key)}"})).status_code == 200
        requests = app.metrics.requests.labels("/api/{user_id}/{rest:path}", "200")
        misses = app.metrics.token_cache.labels("miss")
        for _ in range(100):
            if requests._value.get() == 1 and misses._value.get() == 1:
                break
            await asyncio.sleep(0.02)
        assert (requests._value.get(), misses._value.get()) == (1, 1)  # one request, one verification (a miss)
