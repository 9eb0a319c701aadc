from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import httpx
import pytest

from gateway.errors import InvalidToken, ServiceUnavailable
from gateway.jwks import JwksCache, parse_jwks
from tests.gateway.conftest import (
    ISSUER,
    JWKS_URL,
    FakeClock,
    JwksEndpoint,
    SigningKey,
    counting,
    issuer_config,
    jwks,
    make_key,
)

pytestmark = pytest.mark.anyio

ED = make_key("EdDSA", "ed-1")
ED2 = make_key("EdDSA", "ed-2")
ES = make_key("ES256", "es-1")
RS = make_key("RS256", "rs-1")


def cache_for(
    endpoint: JwksEndpoint, clock: FakeClock, calls: list[tuple[str, str]] | None = None, **config: Any
) -> JwksCache:
    return JwksCache(
        [issuer_config(**config)],
        endpoint.client(),
        clock=clock,
        on_fetch=counting(calls) if calls is not None else None,
    )


async def test_start_fetches_and_serves_keys(jwks_endpoint: JwksEndpoint, clock: FakeClock) -> None:
    jwks_endpoint.serve(ED, ES, RS)
    calls: list[tuple[str, str]] = []
    cache = cache_for(jwks_endpoint, clock, calls)
    assert not cache.ready() and cache.key_age(ISSUER) is None
    await cache.start(refresh_interval=None)
    assert cache.ready()
    assert calls == [(ISSUER, "ok")]
    assert jwks_endpoint.urls == [JWKS_URL]
    for key in (ED, ES, RS):
        found = await cache.get_key(ISSUER, key.kid, key.alg)
        assert found.key_id == key.kid and found.algorithm_name == key.alg
    clock.advance(12)
    assert cache.key_age(ISSUER) == 12
    assert jwks_endpoint.requests == 1
    await cache.aclose()


async def test_start_failure_is_not_fatal_and_requests_get_503(jwks_endpoint: JwksEndpoint, clock: FakeClock) -> None:
    jwks_endpoint.status = 500
    calls: list[tuple[str, str]] = []
    cache = cache_for(jwks_endpoint, clock, calls)
    await cache.start(refresh_interval=None)
    assert not cache.ready()
    assert calls == [(ISSUER, "error")]
    with pytest.raises(ServiceUnavailable) as caught:
        await cache.get_key(ISSUER, "ed-1", "EdDSA")  # within the cooldown: no second fetch
    assert caught.value.headers("gateway") == [("retry-after", "10")]
    assert jwks_endpoint.requests == 1
    jwks_endpoint.status = 200
    jwks_endpoint.serve(ED)
    clock.advance(10)
    assert (await cache.get_key(ISSUER, "ed-1", "EdDSA")).key_id == "ed-1"  # retried after the cooldown
    assert cache.ready()
    assert jwks_endpoint.requests == 2


async def test_unknown_kid_refetches_once_then_cooldown(jwks_endpoint: JwksEndpoint, clock: FakeClock) -> None:
    jwks_endpoint.serve(ED)
    cache = cache_for(jwks_endpoint, clock)
    await cache.start(refresh_interval=None)
    with pytest.raises(InvalidToken) as caught:
        await cache.get_key(ISSUER, "random-1", "EdDSA")
    assert caught.value.reason == "unknown_kid"
    assert jwks_endpoint.requests == 2  # one refetch
    for index in range(20):
        with pytest.raises(InvalidToken):
            await cache.get_key(ISSUER, f"random-{index}", "EdDSA")
    assert jwks_endpoint.requests == 2  # cooldown: random kids cannot hammer the identity service
    clock.advance(10)
    with pytest.raises(InvalidToken):
        await cache.get_key(ISSUER, "random-x", "EdDSA")
    assert jwks_endpoint.requests == 3


async def test_rotation_is_picked_up_by_unknown_kid(jwks_endpoint: JwksEndpoint, clock: FakeClock) -> None:
    jwks_endpoint.serve(ED)
    cache = cache_for(jwks_endpoint, clock)
    await cache.start(refresh_interval=None)
    jwks_endpoint.serve(ED, ED2)  # identity rotates a key in and signs with it at once
    assert (await cache.get_key(ISSUER, "ed-2", "EdDSA")).key_id == "ed-2"
    assert jwks_endpoint.requests == 2


async def test_scheduled_refresh_does_not_block_an_unknown_kid_fetch(
    jwks_endpoint: JwksEndpoint, clock: FakeClock
) -> None:
    """A key published just after a TTL refresh must not wait out the cooldown (no 401 on rotation)."""
    jwks_endpoint.serve(ED)
    cache = cache_for(jwks_endpoint, clock, jwks_ttl=60)
    await cache.start(refresh_interval=None)
    clock.advance(60)
    await cache.refresh_due()
    assert jwks_endpoint.requests == 2
    jwks_endpoint.serve(ED, ED2)
    clock.advance(1)
    assert (await cache.get_key(ISSUER, "ed-2", "EdDSA")).key_id == "ed-2"
    assert jwks_endpoint.requests == 3


async def test_single_flight_under_100_concurrent_unknown_kid_requests(
    jwks_endpoint: JwksEndpoint, clock: FakeClock
) -> None:
    jwks_endpoint.serve(ED)
    cache = cache_for(jwks_endpoint, clock)
    await cache.start(refresh_interval=None)
    jwks_endpoint.serve(ED, ED2)
    jwks_endpoint.gate = asyncio.Event()

    async def lookup() -> str | None:
        return (await cache.get_key(ISSUER, "ed-2", "EdDSA")).key_id

    tasks = [asyncio.create_task(lookup()) for _ in range(100)]
    await asyncio.sleep(0.05)  # every caller is now waiting on the one fetch
    assert jwks_endpoint.requests == 2
    jwks_endpoint.gate.set()
    assert await asyncio.gather(*tasks) == ["ed-2"] * 100
    assert jwks_endpoint.requests == 2  # exactly one refetch


async def test_single_flight_under_100_concurrent_cold_requests(jwks_endpoint: JwksEndpoint, clock: FakeClock) -> None:
    jwks_endpoint.serve(ED)
    cache = cache_for(jwks_endpoint, clock)  # never started: the first requests find no keys at all
    keys = await asyncio.gather(*(cache.get_key(ISSUER, "ed-1", "EdDSA") for _ in range(100)))
    assert {k.key_id for k in keys} == {"ed-1"}
    assert jwks_endpoint.requests == 1


async def test_ttl_refresh_in_background_serves_cached_keys_meanwhile(
    jwks_endpoint: JwksEndpoint, clock: FakeClock
) -> None:
    jwks_endpoint.serve(ED)
    cache = cache_for(jwks_endpoint, clock, jwks_ttl=300)
    await cache.start(refresh_interval=None)
    clock.advance(299)
    await cache.get_key(ISSUER, "ed-1", "EdDSA")
    await asyncio.sleep(0)
    assert jwks_endpoint.requests == 1  # still fresh
    clock.advance(1)
    jwks_endpoint.gate = asyncio.Event()
    assert (await cache.get_key(ISSUER, "ed-1", "EdDSA")).key_id == "ed-1"  # answered from cache, not blocked
    await asyncio.sleep(0.01)
    assert jwks_endpoint.requests == 2  # refresh started in the background
    jwks_endpoint.gate.set()
    await asyncio.sleep(0.01)
    assert cache.key_age(ISSUER) == 0
    await cache.aclose()


async def test_stale_if_error_then_expiry_of_staleness(jwks_endpoint: JwksEndpoint, clock: FakeClock) -> None:
    jwks_endpoint.serve(ED)
    calls: list[tuple[str, str]] = []
    cache = cache_for(jwks_endpoint, clock, calls, jwks_ttl=300, jwks_stale_for=600)
    await cache.start(refresh_interval=None)
    jwks_endpoint.error = httpx.ConnectError("identity is down")
    clock.advance(300)
    await cache.refresh_due()
    assert calls[-1] == (ISSUER, "error")
    assert cache.ready()
    assert (await cache.get_key(ISSUER, "ed-1", "EdDSA")).key_id == "ed-1"  # last good keys keep serving
    clock.advance(599)
    await cache.refresh_due()
    assert cache.ready() and cache.fingerprints(ISSUER)
    clock.advance(1)
    assert not cache.ready()
    assert cache.fingerprints(ISSUER) == frozenset()
    with pytest.raises(ServiceUnavailable):
        await cache.get_key(ISSUER, "ed-1", "EdDSA")
    jwks_endpoint.error = None
    clock.advance(10)
    assert (await cache.get_key(ISSUER, "ed-1", "EdDSA")).key_id == "ed-1"
    assert cache.ready()


async def test_failed_refresh_keeps_old_keys(jwks_endpoint: JwksEndpoint, clock: FakeClock) -> None:
    jwks_endpoint.serve(ED)
    cache = cache_for(jwks_endpoint, clock)
    await cache.start(refresh_interval=None)
    jwks_endpoint.body = b"not json"
    assert await cache.refresh(ISSUER)  # still usable
    assert (await cache.get_key(ISSUER, "ed-1", "EdDSA")).key_id == "ed-1"


@pytest.mark.parametrize(
    ("setup", "outcome"),
    [
        pytest.param({"status": 404}, "error", id="HTTP 404"),
        pytest.param({"status": 302, "headers": {"location": "http://evil/jwks"}}, "error", id="redirect not followed"),
        pytest.param({"error": httpx.ConnectError("refused")}, "error", id="connection refused"),
        pytest.param({"error": httpx.ReadTimeout("slow")}, "timeout", id="httpx timeout"),
        pytest.param({"delay": 0.5}, "timeout", id="whole-fetch deadline"),
        pytest.param({"body": b"x" * 5000}, "too_large", id="oversized body"),
        pytest.param({"headers": {"content-length": "999999"}, "body": b"{}"}, "too_large", id="declared too large"),
        pytest.param(
            {"body": gzip.compress(b" " * 100_000), "headers": {"content-encoding": "gzip"}},
            "too_large",
            id="gzip bomb",
        ),
        pytest.param({"body": b"{garbage"}, "invalid", id="garbage JSON"),
        pytest.param({"body": b"[]"}, "invalid", id="JSON array"),
        pytest.param({"body": b'{"keys": {}}'}, "invalid", id="keys not a list"),
        pytest.param({"body": b'{"keys": []}'}, "invalid", id="no keys"),
        pytest.param({"body": b"[" * 100_000}, "too_large", id="deep nesting is cut by the cap"),
        pytest.param({"body": b"[" * 2000 + b"]" * 2000}, "invalid", id="deep nesting"),
        pytest.param(
            {"body": json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).encode()},
            "invalid",
            id="only a symmetric key",
        ),
    ],
)
async def test_fetch_failures(
    jwks_endpoint: JwksEndpoint, clock: FakeClock, setup: dict[str, Any], outcome: str
) -> None:
    for name, value in setup.items():
        setattr(jwks_endpoint, name, value)
    calls: list[tuple[str, str]] = []
    cache = cache_for(jwks_endpoint, clock, calls, jwks_max_bytes=4096, jwks_timeout=0.1)
    assert not await cache.refresh(ISSUER)
    assert calls == [(ISSUER, outcome)]
    assert not cache.ready()


async def test_a_content_length_of_non_ascii_digits_is_not_a_number(
    jwks_endpoint: JwksEndpoint, clock: FakeClock
) -> None:
    """httpx reads a header byte 0xb2 as "²": str.isdigit() is true, int() fails. The header means nothing; the
    body is counted against the cap as it streams and the fetch succeeds."""
    jwks_endpoint.serve(ED)
    jwks_endpoint.headers = {b"content-length": b"\xb2"}  # type: ignore[dict-item]
    calls: list[tuple[str, str]] = []
    cache = cache_for(jwks_endpoint, clock, calls)
    assert await cache.refresh(ISSUER)
    assert calls == [(ISSUER, "ok")]


def jwk(key: SigningKey, **overrides: Any) -> dict[str, Any]:
    return key.public_jwk(**overrides)


@pytest.mark.parametrize(
    ("entry", "usable"),
    [
        pytest.param(jwk(ED), {"EdDSA"}, id="EdDSA"),
        pytest.param(jwk(ES), {"ES256"}, id="ES256"),
        pytest.param(jwk(RS), {"RS256"}, id="RS256"),
        pytest.param(jwk(ED, alg=None), {"EdDSA"}, id="no alg: inferred from curve"),
        pytest.param(jwk(RS, alg=None), {"RS256"}, id="no alg RSA: every allowed RSA algorithm"),
        pytest.param(jwk(ES, alg="ES384"), set(), id="alg does not fit the curve"),
        pytest.param(jwk(ED, alg="ES256"), set(), id="alg does not fit the key type"),
        pytest.param(jwk(RS, alg="PS256"), set(), id="alg not in the allowlist"),
        pytest.param(jwk(RS, alg="HS256"), set(), id="symmetric alg on an RSA key"),
        pytest.param({"kty": "oct", "k": "c2VjcmV0", "kid": "k", "alg": "HS256"}, set(), id="oct key"),
        pytest.param(jwk(ED, use="enc"), set(), id="use enc"),
        pytest.param(jwk(ED, key_ops=["encrypt"]), set(), id="key_ops without verify"),
        pytest.param(jwk(ED, key_ops=["verify"]), {"EdDSA"}, id="key_ops verify"),
        pytest.param(jwk(ED, d="AAAA"), set(), id="private key material"),
        pytest.param(jwk(ED, kid=5), set(), id="kid not a string"),
        pytest.param(jwk(ED, kid=""), set(), id="empty kid"),
        pytest.param(jwk(ED, x="!!!"), set(), id="bad key material"),
        pytest.param(jwk(ES, crv="P-999"), set(), id="unknown curve"),
        pytest.param(jwk(make_key("RS256", "small", rsa_bits=1024)), set(), id="RSA 1024 bits"),
        pytest.param("not an object", set(), id="not an object"),
    ],
)
def test_key_filtering(entry: Any, usable: set[str]) -> None:
    document = json.dumps({"keys": [entry, jwk(make_key("ES256", "other"))]}).encode()
    keys, _ = parse_jwks(document, ("EdDSA", "ES256", "RS256"))
    kid = entry.get("kid") if isinstance(entry, dict) else None
    found = keys.get(kid, {}) if isinstance(kid, str | None) else {}
    assert set(found) == usable


def test_rsa_without_alg_binds_every_allowed_rsa_algorithm() -> None:
    keys, _ = parse_jwks(json.dumps(jwks(jwk(RS, alg=None))).encode(), ("RS256", "PS256", "EdDSA"))
    assert set(keys["rs-1"]) == {"RS256", "PS256"}


def test_duplicate_kids_are_ambiguous_and_dropped() -> None:
    other = make_key("EdDSA", "ed-1")
    keys, _ = parse_jwks(json.dumps(jwks(ED, other, ES)).encode(), ("EdDSA", "ES256"))
    assert set(keys) == {"es-1"}


async def test_kid_less_tokens_need_a_single_key(jwks_endpoint: JwksEndpoint, clock: FakeClock) -> None:
    jwks_endpoint.serve(ED)
    cache = cache_for(jwks_endpoint, clock)
    await cache.start(refresh_interval=None)
    assert (await cache.get_key(ISSUER, None, "EdDSA")).key_id == "ed-1"
    jwks_endpoint.serve(ED, ED2)
    await cache.refresh(ISSUER)
    with pytest.raises(InvalidToken) as caught:
        await cache.get_key(ISSUER, None, "EdDSA")
    assert caught.value.reason == "unknown_kid"


async def test_alg_must_match_the_key(jwks_endpoint: JwksEndpoint, clock: FakeClock) -> None:
    jwks_endpoint.serve(ED)
    cache = cache_for(jwks_endpoint, clock)
    await cache.start(refresh_interval=None)
    with pytest.raises(InvalidToken) as caught:
        await cache.get_key(ISSUER, "ed-1", "ES256")
    assert caught.value.reason == "alg_mismatch"
    assert jwks_endpoint.requests == 1


async def test_unknown_issuer(jwks_endpoint: JwksEndpoint, clock: FakeClock) -> None:
    cache = cache_for(jwks_endpoint, clock)
    with pytest.raises(InvalidToken) as caught:
        await cache.get_key("https://evil", "k", "EdDSA")
    assert caught.value.reason == "bad_issuer"
    assert jwks_endpoint.requests == 0


@pytest.mark.parametrize(
    ("cache_control", "ttl"),
    [
        pytest.param(None, 300, id="no header: configured TTL"),
        pytest.param("public, max-age=60", 60, id="max-age shortens"),
        pytest.param("max-age=86400", 300, id="max-age never lengthens"),
        pytest.param("max-age=0", 10, id="floor is the cooldown"),
        pytest.param("no-store", 300, id="other directives ignored"),
    ],
)
async def test_cache_control_max_age(
    jwks_endpoint: JwksEndpoint, clock: FakeClock, cache_control: str | None, ttl: float
) -> None:
    jwks_endpoint.serve(ED)
    if cache_control:
        jwks_endpoint.headers["cache-control"] = cache_control
    cache = cache_for(jwks_endpoint, clock, jwks_ttl=300)
    await cache.start(refresh_interval=None)
    clock.advance(ttl - 1)
    await cache.refresh_due()
    assert jwks_endpoint.requests == 1
    clock.advance(1)
    await cache.refresh_due()
    assert jwks_endpoint.requests == 2


async def test_rotation_without_restart_removes_old_key(jwks_endpoint: JwksEndpoint, clock: FakeClock) -> None:
    jwks_endpoint.serve(ED)
    cache = cache_for(jwks_endpoint, clock, jwks_ttl=60)
    await cache.start(refresh_interval=None)
    before = cache.fingerprints(ISSUER)
    jwks_endpoint.serve(ED2)
    clock.advance(60)
    await cache.refresh_due()
    assert (await cache.get_key(ISSUER, "ed-2", "EdDSA")).key_id == "ed-2"
    assert cache.fingerprints(ISSUER).isdisjoint(before)
    clock.advance(10)
    with pytest.raises(InvalidToken):
        await cache.get_key(ISSUER, "ed-1", "EdDSA")


async def test_background_loop_refreshes_without_traffic(jwks_endpoint: JwksEndpoint) -> None:
    jwks_endpoint.serve(ED)
    clock = FakeClock()
    cache = cache_for(jwks_endpoint, clock, jwks_ttl=60)
    await cache.start(refresh_interval=0.01)
    clock.advance(61)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if jwks_endpoint.requests >= 2:
            break
    assert jwks_endpoint.requests == 2
    await cache.aclose()


async def test_on_fetch_hook_errors_do_not_break_refresh(jwks_endpoint: JwksEndpoint, clock: FakeClock) -> None:
    jwks_endpoint.serve(ED)

    def broken(issuer: str, outcome: str) -> None:
        raise RuntimeError("metrics down")

    cache = JwksCache([issuer_config()], jwks_endpoint.client(), clock=clock, on_fetch=broken)
    assert await cache.refresh(ISSUER)


async def test_unexpected_fetch_errors_are_failed_fetches(jwks_endpoint: JwksEndpoint, clock: FakeClock) -> None:
    jwks_endpoint.serve(ED)
    calls: list[tuple[str, str]] = []
    client = jwks_endpoint.client()
    await client.aclose()  # sending on a closed client raises RuntimeError, not an httpx error
    cache = JwksCache([issuer_config()], client, clock=clock, on_fetch=counting(calls))
    assert not await cache.refresh(ISSUER)
    jwks_endpoint.error = ValueError("transport bug")
    cache = JwksCache([issuer_config()], jwks_endpoint.client(), clock=clock, on_fetch=counting(calls))
    assert not await cache.refresh(ISSUER)
    assert calls == [(ISSUER, "error"), (ISSUER, "error")]


async def test_refresh_loop_survives_a_failing_iteration(jwks_endpoint: JwksEndpoint, clock: FakeClock) -> None:
    jwks_endpoint.serve(ED)
    cache = cache_for(jwks_endpoint, clock, jwks_ttl=60)
    await cache.start(refresh_interval=None)
    failures = 0
    original = cache.refresh_due

    async def flaky() -> None:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise RuntimeError("boom")
        await original()

    cache.refresh_due = flaky  # type: ignore[method-assign]
    await cache.start(refresh_interval=0.01)
    clock.advance(60)
    for _ in range(200):
        await asyncio.sleep(0.01)
        if jwks_endpoint.requests >= 3:
            break
    assert failures == 3 and jwks_endpoint.requests >= 3
    await cache.aclose()
