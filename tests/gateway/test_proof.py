"""The gateway -> backend proof (gateway/proof.py): what a backend accepts and what it refuses."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway import proof

SECRET = b"s" * 32
OTHER = b"o" * 32
NOW = 1_800_000_000


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def signed_headers(
    *,
    secret: bytes = SECRET,
    method: str = "GET",
    target: str = "/api/u1/tasks",
    user_id: str | None = "u1",
    email: str | None = "a@example.com",
    request_id: str = "req-1",
    timestamp: int = NOW,
) -> list[tuple[bytes, bytes]]:
    value = proof.sign(
        secret, method=method, target=target, user_id=user_id, email=email, request_id=request_id, timestamp=timestamp
    )
    headers = [(b"x-edge-proof", value.encode()), (b"x-request-id", request_id.encode())]
    if user_id:
        headers.append((b"x-user-id", user_id.encode()))
    if email:
        headers.append((b"x-user-email", email.encode()))
    return headers


def test_valid_proof_yields_identity() -> None:
    verifier = proof.ProofVerifier([SECRET], clock=Clock())
    identity = verifier.verify("GET", "/api/u1/tasks", signed_headers())
    assert identity == proof.Identity(user_id="u1", email="a@example.com", request_id="req-1")


def test_anonymous_proof_yields_no_user() -> None:
    verifier = proof.ProofVerifier([SECRET], clock=Clock())
    identity = verifier.verify("GET", "/login", signed_headers(target="/login", user_id=None, email=None))
    assert identity.user_id is None and identity.email is None


def test_previous_secret_still_verifies_during_rotation() -> None:
    verifier = proof.ProofVerifier([OTHER, SECRET], clock=Clock())
    assert verifier.verify("GET", "/api/u1/tasks", signed_headers()).user_id == "u1"


def _swap(headers: list[tuple[bytes, bytes]], name: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    return [(k, value if k == name else v) for k, v in headers]


@pytest.mark.parametrize(
    ("method", "target", "headers", "now", "reason"),
    [
        pytest.param("GET", "/api/u1/tasks", [], NOW, "missing", id="no proof"),
        pytest.param("GET", "/api/u1/tasks", signed_headers(secret=OTHER), NOW, "invalid", id="wrong secret"),
        pytest.param("POST", "/api/u1/tasks", signed_headers(), NOW, "invalid", id="other method"),
        pytest.param("GET", "/api/u2/tasks", signed_headers(), NOW, "invalid", id="other path"),
        pytest.param("GET", "/api/u1/tasks?status=all", signed_headers(), NOW, "invalid", id="other query"),
        pytest.param(
            "GET", "/api/u1/tasks", _swap(signed_headers(), b"x-user-id", b"u2"), NOW, "invalid", id="other user"
        ),
        pytest.param(
            "GET",
            "/api/u1/tasks",
            _swap(signed_headers(), b"x-user-email", b"b@example.com"),
            NOW,
            "invalid",
            id="other email",
        ),
        pytest.param(
            "GET",
            "/api/u1/tasks",
            [h for h in signed_headers() if h[0] != b"x-user-id"],
            NOW,
            "invalid",
            id="user header dropped",
        ),
        pytest.param(
            "GET",
            "/api/u1/tasks",
            [*signed_headers(), (b"X-User-Id", b"u2")],
            NOW,
            "duplicate_header",
            id="duplicate user header",
        ),
        pytest.param("GET", "/api/u1/tasks", signed_headers(), NOW + 31, "expired", id="expired"),
        pytest.param("GET", "/api/u1/tasks", signed_headers(), NOW - 31, "expired", id="from the future"),
        pytest.param("GET", "/api/u1/tasks", [(b"x-edge-proof", b"v1;t=1;s=")], NOW, "malformed", id="empty signature"),
        pytest.param("GET", "/api/u1/tasks", [(b"x-edge-proof", b"v2;t=1;s=AAAA")], NOW, "malformed", id="version"),
        pytest.param("GET", "/api/u1/tasks", [(b"x-edge-proof", b"v1;t=-1;s=AAAA")], NOW, "malformed", id="negative t"),
        pytest.param("GET", "/api/u1/tasks", [(b"x-edge-proof", b"garbage")], NOW, "malformed", id="garbage"),
        pytest.param("GET", "/api/u1/tasks", [(b"x-edge-proof", b"v1;t=1;s=!!")], NOW, "malformed", id="bad base64"),
        # Headers are read as latin-1: 0xb2 is "²", for which str.isdigit() is true and int() fails (was a 500).
        pytest.param(
            "GET",
            "/api/u1/tasks",
            [(b"x-edge-proof", b"v1;t=\xb2;s=" + b"A" * 43)],
            NOW,
            "malformed",
            id="t=superscript two",
        ),
        pytest.param(
            "GET",
            "/api/u1/tasks",
            [(b"x-edge-proof", b"v1;t=\xb9\xb2\xb3;s=" + b"A" * 43)],
            NOW,
            "malformed",
            id="t=superscript one two three",
        ),
    ],
)
def test_refused(method: str, target: str, headers: list[tuple[bytes, bytes]], now: int, reason: str) -> None:
    verifier = proof.ProofVerifier([SECRET], clock=Clock(now))
    with pytest.raises(proof.ProofError) as info:
        verifier.verify(method, target, headers)
    assert info.value.reason == reason


def test_replay_of_the_same_request_is_refused() -> None:
    verifier = proof.ProofVerifier([SECRET], clock=Clock())
    headers = signed_headers()
    verifier.verify("GET", "/api/u1/tasks", headers)
    with pytest.raises(proof.ProofError) as info:
        verifier.verify("GET", "/api/u1/tasks", headers)
    assert info.value.reason == "replayed"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param(None, "not set", id="unset"),
        pytest.param("  ", "not set", id="blank"),
        pytest.param("short", "at least 32", id="short"),
        pytest.param("a" * 32 + ",short", "entry 2", id="second entry short"),
    ],
)
def test_parse_secrets_refuses(value: str | None, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        proof.parse_secrets(value)


def test_parse_secrets_keeps_order() -> None:
    assert proof.parse_secrets(f"{'a' * 32}, {'b' * 40}") == (b"a" * 32, b"b" * 40)


async def whoami(request: Request) -> JSONResponse:
    identity = proof.identity_of(request)
    return JSONResponse({"user": identity.user_id})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"user_header": request.headers.get("x-user-id"), "identity": request.state.identity})


def _app(clock: Clock) -> proof.ProofMiddleware:
    inner = Starlette(routes=[Route("/api/{user}/whoami", whoami), Route("/livez", health)])
    return proof.ProofMiddleware(inner, proof.ProofVerifier([SECRET], clock=clock))


@pytest.mark.anyio
async def test_middleware_verifies_the_raw_path_and_query() -> None:
    target = "/api/u%201/whoami?x=1"
    clock = Clock()
    transport = httpx.ASGITransport(app=_app(clock))
    async with httpx.AsyncClient(transport=transport, base_url="http://backend") as client:
        headers = {k.decode(): v.decode() for k, v in signed_headers(target=target, user_id="u 1")}
        ok = await client.get(target, headers=headers)
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"user": "u 1"}
        clock.now += 60
        stale = await client.get(target, headers=headers)
        assert stale.status_code == 401
        assert stale.json()["reason"] == "expired"


@pytest.mark.anyio
async def test_middleware_refuses_without_proof_and_strips_headers_on_exempt_paths() -> None:
    transport = httpx.ASGITransport(app=_app(Clock()))
    async with httpx.AsyncClient(transport=transport, base_url="http://backend") as client:
        refused = await client.get("/api/u1/whoami", headers={"X-User-Id": "u1"})
        assert refused.status_code == 401
        assert refused.json()["error"] == "unauthenticated"
        health_response = await client.get("/livez", headers={"X-User-Id": "u1"})
        assert health_response.json() == {"user_header": None, "identity": None}
