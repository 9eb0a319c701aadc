"""PostgreSQL (a private cluster, never the machine's) is stopped abruptly and started again while identity and the
tasks backend take writes through the real gateway: requests fail only while it is down, and cleanly (503), every
write that was answered with success is still there afterwards, and both services recover without a restart."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from tests.conftest import POSTGRES_ENV
from tests.reliability._support import PASSWORD, Recorder, Sample, no_cookie_client, sign_up, task_ids, wait_until
from tests.reliability.conftest import RealStack

pytestmark = pytest.mark.integration

#: How long after PostgreSQL accepts connections again the services may still fail (pool_pre_ping reconnects on
#: the next checkout; a request that was waiting for a connection when it came back may still see the error).
RECOVERY = 2.0


def _errors_outside(samples: list[Sample], ok: set[int], down: float, up: float) -> list[Sample]:
    """Failures of requests that did not overlap the outage [down, up + RECOVERY]."""
    return [s for s in samples if s.status not in ok and (s.ended < down or s.started > up + RECOVERY)]


def test_postgres_restarted_under_load(real_stack: RealStack) -> None:
    postgres = real_stack.postgres
    if postgres is None:
        message = "no PostgreSQL binaries (/usr/lib/postgresql/*/bin/initdb) for a private cluster"
        if os.environ.get(POSTGRES_ENV):
            pytest.fail(message)
        pytest.skip(message)
    stack = real_stack.stack
    pids = {name: stack.service(name).process.pid for name in ("identity", "tasks", "gateway")}  # type: ignore[union-attr]
    with no_cookie_client(real_stack.url) as client:
        alice, bob = sign_up(client, "alice"), sign_up(client, "bob")

        def write_task(index: int) -> tuple[int, str | None]:
            user = (alice, bob)[index % 2]
            response = client.post(f"/api/{user.id}/tasks", json={"title": f"task {index}"}, headers=user.bearer)
            if response.status_code == 201:
                return 201, response.json()["id"]
            if response.status_code == 503:
                assert response.json()["error"] == "unavailable", response.text
            return response.status_code, None

        def sign_in(index: int) -> tuple[int, str | None]:
            user = (alice, bob)[index % 2]
            response = client.post("/api/auth/sign-in/email", json={"email": user.email, "password": PASSWORD})
            if response.status_code == 200:
                return 200, response.json()["token"]
            body = response.json()
            assert set(body) == {"message", "code"}, response.text  # a documented error body, not a bare 500
            return response.status_code, None

        tasks = Recorder(write_task, interval=0.03)
        logins = Recorder(sign_in, interval=0.15)
        tasks.start()
        logins.start()
        try:
            time.sleep(1.0)
            down = time.monotonic()
            postgres.stop("immediate")  # a crash, not a polite shutdown: in-flight transactions die
            time.sleep(1.5)
            postgres.start()
            up = time.monotonic()
            # Both services come back by themselves; keep the load on a while to see that.
            time.sleep(RECOVERY + 1.5)
        finally:
            task_samples, login_samples = tasks.stop(), logins.stop()

        # Errors only while the database was down, and only the documented "unavailable" ones.
        assert _errors_outside(task_samples, {201}, down, up) == []
        assert _errors_outside(login_samples, {200}, down, up) == []
        assert {s.status for s in task_samples} <= {201, 503}, {s.status for s in task_samples}
        assert {s.status for s in login_samples} <= {200, 503}, {s.status for s in login_samples}
        assert any(s.status == 503 for s in task_samples), "the outage was never observed: the test proves nothing"
        after = [s for s in task_samples if s.started > up + RECOVERY]
        assert len(after) >= 10 and {s.status for s in after} == {201}

        # Nothing that was answered with success was lost.
        created = {s.value for s in task_samples if s.status == 201}
        stored = task_ids(client, alice) | task_ids(client, bob)
        assert created - stored == set()
        for sample in login_samples:
            if sample.status == 200:
                session = client.get("/api/auth/get-session", headers={"authorization": f"Bearer {sample.value}"})
                assert session.status_code == 200 and session.json() is not None, sample

    # Recovered without a restart.
    assert {name: stack.service(name).process.pid for name in pids} == pids  # type: ignore[union-attr]
    for name in ("identity", "tasks"):
        assert wait_until(lambda: httpx.get(f"{stack.url(name)}/readyz", timeout=2).status_code == 200, 5), name
