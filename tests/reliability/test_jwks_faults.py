"""The identity service's JWKS endpoint breaks while the real gateway process runs: down, hanging, trickling, 500,
garbage, oversized (chunked, so only counting stops it). The gateway keeps serving tokens signed by
keys it already holds, answers within its JWKS timeout, never hangs a client, stays ready, and picks up new keys
by itself once the endpoint is back."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import AUDIENCE, ISSUER, jwks, make_key, mint
from tests.reliability._support import JWKS_FAULTS, GatewayProcess, JwksServer, wait_until
from tests.reliability.conftest import JWKS_COOLDOWN, JWKS_TIMEOUT, JWKS_TTL, Edge

pytestmark = pytest.mark.integration

#: How much slower than its own bound the gateway may be on this busy 2-core machine.
SLACK = 1.5


def _failed_fetches(edge: Edge) -> float:
    gateway = edge.gateway
    return gateway.metric("gateway_jwks_fetches_total") - gateway.metric("gateway_jwks_fetches_total", outcome="ok")


def _key_age(edge: Edge) -> float:
    return edge.gateway.metric("gateway_jwks_key_age_seconds")


def _timed(client: httpx.Client, token: str) -> tuple[int, float]:
    status, elapsed, _ = _timed_response(client, token)
    return status, elapsed


def _timed_response(client: httpx.Client, token: str) -> tuple[int, float, httpx.Response]:
    started = time.monotonic()
    response = client.get("/api/alice/tasks", headers={"authorization": f"Bearer {token}"})
    return response.status_code, time.monotonic() - started, response


@pytest.mark.parametrize("fault", JWKS_FAULTS)
def test_a_broken_jwks_endpoint_does_not_break_known_keys_and_recovers(edge: Edge, fault: str) -> None:
    newcomer = make_key("EdDSA", f"new-{fault}")  # a key the identity service publishes only after the fault
    original = edge.jwks.document
    failed = _failed_fetches(edge)
    with httpx.Client(base_url=edge.gateway.url, timeout=10, trust_env=False) as client:
        edge.jwks.mode = fault
        try:
            # An unknown kid makes the gateway fetch now, from the broken endpoint: a 401 within the JWKS timeout.
            status, elapsed = _timed(client, mint(newcomer, sub="alice"))
            assert (status, elapsed < JWKS_TIMEOUT + SLACK) == (401, True), (status, elapsed)
            assert wait_until(lambda: _failed_fetches(edge) > failed, JWKS_TTL + JWKS_TIMEOUT + 3)
            assert wait_until(lambda: _key_age(edge) > JWKS_TTL, JWKS_TTL + 1)  # the keys held are now stale

            # Stale keys keep serving, at full speed, from several clients at once.
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                results = list(pool.map(lambda _: _timed(client, edge.token()), range(24)))
            assert [status for status, _ in results] == [200] * 24
            assert max(elapsed for _, elapsed in results) < SLACK, results
            assert client.get("/readyz").status_code == 200
        finally:
            edge.jwks.document = jwks(edge.key, newcomer)
            edge.jwks.mode = "ok"

    # Back: the new key is picked up by itself (unknown-kid refetch after the cooldown, or the scheduled refresh).
    with httpx.Client(base_url=edge.gateway.url, timeout=10, trust_env=False) as client:
        token = mint(newcomer, sub="alice")
        assert wait_until(lambda: _timed(client, token)[0] == 200, JWKS_TTL + JWKS_COOLDOWN + JWKS_TIMEOUT + 3)
        assert _timed(client, edge.token())[0] == 200
    edge.jwks.document = original


def test_a_cold_gateway_facing_a_hanging_jwks_answers_503_in_time_then_recovers(edge: Edge, tmp_path: Path) -> None:
    key = make_key("EdDSA", "cold-1")
    server = JwksServer(edge.loop, jwks(key))
    server.mode = "hang"
    config = f"""
[[issuers]]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
jwks_url = "{server.url}"
jwks_timeout = {JWKS_TIMEOUT}
jwks_refetch_cooldown = {JWKS_COOLDOWN}

[[routes]]
path = "/api/{{user_id}}/{{rest:path}}"
upstream = "{edge.backend_url}"
auth = "owner"
"""
    gateway = GatewayProcess(config, tmp_path, args=["--no-access-log"])
    try:
        gateway.wait_live()
        with httpx.Client(base_url=gateway.url, timeout=10, trust_env=False) as client:
            assert client.get("/readyz").status_code == 503
            token = mint(key, sub="alice")
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                results = list(pool.map(lambda _: _timed_response(client, token), range(6)))
            assert {status for status, _, _ in results} == {503}
            assert max(elapsed for _, elapsed, _ in results) < JWKS_TIMEOUT + SLACK, results
            assert all(int(response.headers["retry-after"]) >= 1 for _, _, response in results)

            server.mode = "ok"
            assert wait_until(lambda: _timed(client, token)[0] == 200, JWKS_COOLDOWN + JWKS_TIMEOUT + 3)
            assert client.get("/readyz").status_code == 200
        assert gateway.errors() == [], gateway.tail()
    finally:
        gateway.stop()
        server.close()
