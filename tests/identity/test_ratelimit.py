"""Rate limits on sign-in/sign-up per client address and per account, and where the client address comes from."""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from identity.clientip import client_address
from identity.ratelimit import RateLimiter
from tests.identity.conftest import Clock

pytestmark = pytest.mark.anyio

TOO_MANY = {"message": "Too many requests. Please try again later."}


def sign_in_body(email: str = "alice@example.com") -> dict[str, str]:
    return {"email": email, "password": "wrong password"}


async def test_per_address_limit_with_retry_after(make_harness, clock):
    h = await make_harness(IDENTITY_RATE_LIMIT_PER_ADDRESS="3", IDENTITY_RATE_LIMIT_WINDOW="10")
    for index in range(3):
        response = await h.client.post("/api/auth/sign-in/email", json=sign_in_body(f"u{index}@example.com"))
        assert response.status_code == 401
        clock.advance(1)
    response = await h.client.post("/api/auth/sign-in/email", json=sign_in_body("u9@example.com"))
    assert response.status_code == 429
    assert response.json() == TOO_MANY
    assert response.headers["retry-after"] == "7"
    assert response.headers["x-retry-after"] == "7"
    # Sign-up has its own bucket.
    assert (await h.client.post("/api/auth/sign-up/email", json={})).status_code == 400
    clock.advance(7)
    assert (await h.client.post("/api/auth/sign-in/email", json=sign_in_body("u9@example.com"))).status_code == 401


async def test_refused_requests_do_not_extend_the_wait(make_harness, clock):
    h = await make_harness(IDENTITY_RATE_LIMIT_PER_ADDRESS="1", IDENTITY_RATE_LIMIT_WINDOW="10")
    await h.client.post("/api/auth/sign-in/email", json=sign_in_body())
    for _ in range(5):
        clock.advance(1)
        assert (await h.client.post("/api/auth/sign-in/email", json=sign_in_body("x@example.com"))).status_code == 429
    clock.advance(5)
    assert (await h.client.post("/api/auth/sign-in/email", json=sign_in_body("x@example.com"))).status_code == 401


async def test_per_account_limit_across_addresses(make_harness, clock):
    app = (await make_harness(IDENTITY_RATE_LIMIT_PER_ACCOUNT="2")).app
    # One app holds the limiter: drive it through clients with different peer addresses.
    clients = [
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=(f"198.51.100.{n}", 1000)), base_url="http://127.0.0.1:8000"
        )
        for n in (1, 2, 3)
    ]
    try:
        statuses = [
            (await client.post("/api/auth/sign-in/email", json=sign_in_body("Target@example.com"))).status_code
            for client in clients
        ]
        assert statuses == [401, 401, 429]
        # Other accounts from the same addresses are unaffected.
        assert (
            await clients[2].post("/api/auth/sign-in/email", json=sign_in_body("other@example.com"))
        ).status_code == 401
        clock.advance(61)
        assert (
            await clients[2].post("/api/auth/sign-in/email", json=sign_in_body("target@example.com"))
        ).status_code == 401
    finally:
        for client in clients:
            await client.aclose()


async def test_forwarded_for_ignored_without_trusted_proxies(make_harness):
    h = await make_harness(IDENTITY_RATE_LIMIT_PER_ADDRESS="2")
    for n in range(2):
        headers = {"x-forwarded-for": f"192.0.2.{n}"}
        assert (
            await h.client.post("/api/auth/sign-in/email", json=sign_in_body(f"a{n}@example.com"), headers=headers)
        ).status_code == 401
    # A fresh X-Forwarded-For does not buy a fresh bucket.
    response = await h.client.post(
        "/api/auth/sign-in/email", json=sign_in_body("a9@example.com"), headers={"x-forwarded-for": "192.0.2.99"}
    )
    assert response.status_code == 429


async def test_forwarded_for_believed_from_trusted_proxy(make_harness):
    h = await make_harness(
        peer=("10.0.0.2", 5555), IDENTITY_TRUSTED_PROXIES="10.0.0.0/8", IDENTITY_RATE_LIMIT_PER_ADDRESS="1"
    )
    for n in range(3):
        headers = {"x-forwarded-for": f"spoofed, 192.0.2.{n}"}
        response = await h.client.post(
            "/api/auth/sign-up/email",
            json={"name": "n", "email": f"p{n}@example.com", "password": "12345678"},
            headers=headers,
        )
        assert response.status_code == 200
        assert response.json()["token"]
    session = (
        await h.client.get("/api/auth/get-session", headers={"authorization": f"Bearer {response.json()['token']}"})
    ).json()["session"]
    assert session["ipAddress"] == "192.0.2.2"
    again = await h.client.post("/api/auth/sign-up/email", json={}, headers={"x-forwarded-for": "192.0.2.2"})
    assert again.status_code == 429


async def test_rate_limit_off(make_harness):
    h = await make_harness(IDENTITY_RATE_LIMIT="off", IDENTITY_RATE_LIMIT_PER_ADDRESS="1")
    for _ in range(3):
        assert (await h.client.post("/api/auth/sign-in/email", json=sign_in_body())).status_code == 401


PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        pytest.param("192.0.2.7", [], "192.0.2.7", id="direct client"),
        pytest.param("192.0.2.7", ["203.0.113.1"], "192.0.2.7", id="untrusted peer's header ignored"),
        pytest.param("10.1.1.1", [], "10.1.1.1", id="proxy without header"),
        pytest.param("10.1.1.1", ["203.0.113.1"], "203.0.113.1", id="one proxy"),
        pytest.param("10.1.1.1", ["6.6.6.6, 203.0.113.1"], "203.0.113.1", id="client-written entry ignored"),
        pytest.param("10.1.1.1", ["203.0.113.1, 10.2.2.2"], "203.0.113.1", id="two proxies"),
        pytest.param("10.1.1.1", ["6.6.6.6", "203.0.113.1, 10.2.2.2"], "203.0.113.1", id="repeated headers"),
        pytest.param("10.1.1.1", ["10.3.3.3, 10.2.2.2"], "10.3.3.3", id="all trusted: leftmost"),
        pytest.param("10.1.1.1", ["203.0.113.1, nonsense"], "10.1.1.1", id="broken chain"),
        pytest.param("10.1.1.1", ["203.0.113.1:4711"], "203.0.113.1", id="address with port"),
        pytest.param("2001:db8::5", ["[2001:db9::1]:443"], "2001:db9::1", id="ipv6"),
        pytest.param("::ffff:10.1.1.1", ["198.51.100.1"], "198.51.100.1", id="ipv4-mapped proxy"),
        pytest.param(None, ["198.51.100.1"], "", id="no peer"),
    ],
)
def test_client_address(peer, xff, expected):
    assert client_address(peer, xff, PROXIES) == expected


def test_limiter_sliding_window():
    clock = Clock(0)
    limiter = RateLimiter(2, 10, clock)
    assert limiter.hit("k") is None
    clock.advance(4)
    assert limiter.hit("k") is None
    assert limiter.hit("k") == 6
    clock.advance(6)
    assert limiter.hit("k") is None  # the first hit left the window
    assert limiter.hit("k") == 4
    assert limiter.hit("other") is None
