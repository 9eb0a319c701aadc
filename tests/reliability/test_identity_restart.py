"""The identity service is killed and restarted while users work through the real gateway: requests with tokens
the gateway can verify with keys it already holds never notice; sign-ins fail fast with a clear 502 while identity
is down and work again as soon as it is back, with no gateway restart. (An outage longer than the revocation feed's
``revocation_stale_after`` is meant to fail closed instead; the gateway's revocation tests cover that.)"""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from tests.reliability._support import PASSWORD, Recorder, no_cookie_client, sign_up, wait_until
from tests.reliability.conftest import RealStack

pytestmark = pytest.mark.integration

OUTAGE = 1.5  # seconds identity stays down


def test_identity_restarted_under_load(real_stack: RealStack) -> None:
    stack = real_stack.stack
    with no_cookie_client(real_stack.url) as client:
        alice, bob = sign_up(client, "alice"), sign_up(client, "bob")
        gateway_pid = stack.service("gateway").process.pid  # type: ignore[union-attr]

        def work(index: int) -> tuple[int, None]:
            user = (alice, bob)[index % 2]
            if index % 3 == 0:
                response = client.post(f"/api/{user.id}/tasks", json={"title": f"t{index}"}, headers=user.bearer)
            else:
                response = client.get(f"/api/{user.id}/tasks?limit=5", headers=user.bearer)
            return response.status_code, None

        load = Recorder(work, interval=0.02)
        load.start()
        try:
            time.sleep(0.5)
            stack.stop_service("identity", sig=signal.SIGKILL)
            down_at = time.monotonic()
            # While identity is down: sign-ins (and anything routed to identity) fail fast and say so.
            with no_cookie_client(real_stack.url, timeout=5) as other:
                for _ in range(5):
                    started = time.monotonic()
                    response = other.post("/api/auth/sign-in/email", json={"email": alice.email, "password": PASSWORD})
                    assert response.status_code == 502, response.text
                    assert response.json()["error"] == "bad_gateway"
                    assert time.monotonic() - started < 1.0
                assert other.get("/api/auth/jwks").status_code == 502
                assert other.get("/readyz").status_code == 200  # the gateway's keys are still good
            time.sleep(max(0.0, down_at + OUTAGE - time.monotonic()))

            stack.start_service("identity")
            stack.wait_ready("identity")
            # deploy/gateway.toml fails closed (503 for tokens with a sid) once the revocation feed has been
            # unreachable for revocation_stale_after (10 s): by design, so the outage must stay well below it.
            assert time.monotonic() - down_at < 8, "identity took too long to come back for this test to hold"
            # Back: the very first sign-in works, and so does its fresh token, through the same gateway process.
            response = client.post("/api/auth/sign-in/email", json={"email": alice.email, "password": PASSWORD})
            assert response.status_code == 200, response.text
            session = response.json()["token"]
            jwt = client.get("/api/auth/token", headers={"authorization": f"Bearer {session}"}).json()["token"]
            fresh = client.get(f"/api/{alice.id}/tasks", headers={"authorization": f"Bearer {jwt}"})
            assert fresh.status_code == 200, fresh.text
            time.sleep(0.5)
        finally:
            samples = load.stop()
        assert stack.service("gateway").process.pid == gateway_pid  # type: ignore[union-attr]

    # Users holding tokens never noticed: every request of the load succeeded, before, during and after.
    outcomes = {sample.status for sample in samples}
    assert outcomes <= {200, 201}, [s for s in samples if s.status not in (200, 201)][:5]
    during = [s for s in samples if down_at <= s.started <= down_at + OUTAGE]
    assert len(during) >= 15, len(during)
    assert wait_until(lambda: httpx.get(f"{real_stack.url}/readyz", timeout=2, trust_env=False).status_code == 200, 5)
