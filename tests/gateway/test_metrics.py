"""Prometheus metrics: what the pipeline counts, the derived key age, and aggregation over worker processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gateway.metrics import Metrics
from tests.gateway._fwd_fixtures import UpstreamRecorder, gateway_config, running_gateway
from tests.gateway.conftest import ISSUER, SUBJECT, FakeClock, make_key, mint

ROOT = Path(__file__).resolve().parents[2]


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in exposition text (labels in any order), None if absent."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return None


def test_requests_are_counted_by_route_template_and_status():
    metrics = Metrics()
    metrics.request("/api/{user_id}/{rest:path}", 200, 0.003)
    metrics.request("/api/{user_id}/{rest:path}", 200, 0.2)
    metrics.request("/api/{user_id}/{rest:path}", 401, 0.001)
    text = metrics.render().decode()
    route = "/api/{user_id}/{rest:path}"
    assert sample(text, "gateway_requests_total", route=route, status="200") == 2
    assert sample(text, "gateway_requests_total", route=route, status="401") == 1
    assert sample(text, "gateway_request_duration_seconds_count", route=route) == 3
    assert sample(text, "gateway_request_duration_seconds_bucket", route=route, le="0.005") == 2
    assert "_created" not in text


def test_key_age_is_derived_from_the_last_successful_fetch():
    clock = FakeClock(1_000_000.0)
    metrics = Metrics(clock=clock)
    metrics.keys_fetched(ISSUER, clock())
    clock.advance(42)
    assert sample(metrics.render().decode(), "gateway_jwks_key_age_seconds", issuer=ISSUER) == 42


@pytest.mark.anyio
async def test_the_pipeline_counts_token_outcomes_cache_hits_and_jwks_fetches(jwks_endpoint, eddsa_key):
    jwks_endpoint.serve(eddsa_key)
    metrics = Metrics()
    token = mint(eddsa_key)
    forged = mint(make_key("EdDSA", "ed-1"))
    path = f"/api/{SUBJECT}/x"
    config = gateway_config()
    good, bad = {"authorization": f"Bearer {token}"}, {"authorization": f"Bearer {forged}"}
    running = running_gateway(config, jwks_endpoint=jwks_endpoint, recorder=UpstreamRecorder(), metrics=metrics)
    async with running as (_, client):
        for _ in range(3):
            assert (await client.get(path, headers=good)).status_code == 200
        assert (await client.get(path, headers=bad)).status_code == 401
        assert (await client.get(path)).status_code == 401
        assert (await client.get("/api/someone-else/x", headers=good)).status_code == 403
        text = (await client.get("/metrics")).text
    assert sample(text, "gateway_token_verifications_total", outcome="valid") == 3
    assert sample(text, "gateway_token_verifications_total", outcome="bad_signature") == 1
    assert sample(text, "gateway_token_verifications_total", outcome="missing") == 1
    assert sample(text, "gateway_token_verifications_total", outcome="forbidden") == 1
    # The first valid use verifies (miss), the next ones and the 403 are cache hits; the forgery is a miss.
    assert sample(text, "gateway_token_cache_total", result="hit") == 3
    assert sample(text, "gateway_token_cache_total", result="miss") == 2
    assert sample(text, "gateway_jwks_fetches_total", issuer=ISSUER, outcome="ok") >= 1
    assert sample(text, "gateway_jwks_key_age_seconds", issuer=ISSUER) is not None
    assert sample(text, "gateway_requests_total", route="/api/{user_id}/{rest:path}", status="200") == 3


@pytest.mark.anyio
async def test_failed_jwks_fetches_are_counted(jwks_endpoint):
    jwks_endpoint.status = 503
    metrics = Metrics()
    async with running_gateway(gateway_config(), jwks_endpoint=jwks_endpoint, metrics=metrics) as (_, client):
        text = (await client.get("/metrics")).text
    assert sample(text, "gateway_jwks_fetches_total", issuer=ISSUER, outcome="error") == 1
    assert sample(text, "gateway_jwks_key_age_seconds", issuer=ISSUER) is None  # never fetched: no age to report


_WORKER = textwrap.dedent(
    """
    import sys
    from gateway.metrics import Metrics
    metrics = Metrics.from_environ(__import__("os").environ)
    for _ in range(int(sys.argv[1])):
        metrics.request("/r", 200, 0.01)
    metrics.token("valid")
    metrics.keys_fetched("iss", float(sys.argv[2]))
    metrics.flush()  # what the app's timer, a scrape or shutdown does; batched counts are not written before
    if sys.argv[3] == "render":
        sys.stdout.write(metrics.render().decode())
    """
)


def test_worker_processes_are_summed(tmp_path):
    """prometheus_client decides on multiprocess mode at import time, so each 'worker' is its own process."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def worker(requests: int, fetched_at: float, render: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", _WORKER, str(requests), str(fetched_at), render],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return result.stdout

    now = time.time()
    worker(3, now - 100, "no")
    text = worker(4, now - 10, "render")
    assert sample(text, "gateway_requests_total", route="/r", status="200") == 7
    assert sample(text, "gateway_token_verifications_total", outcome="valid") == 2
    # The oldest keys any worker holds count: the age is from the earlier fetch.
    age = sample(text, "gateway_jwks_key_age_seconds", issuer="iss")
    assert age is not None and 100 <= age < 130


_FORKING_WORKER = textwrap.dedent(
    """
    import os
    from gateway.metrics import Metrics
    metrics = Metrics.from_environ(os.environ)
    metrics.request("/r", 200, 0.01)
    metrics.flush()  # the parent's file exists before the fork, and nothing batched is inherited by the child
    child = os.fork()
    if child == 0:  # a metric written after a fork goes to the child's own file, not into the parent's
        metrics.request("/r", 200, 0.01)
        metrics.request("/r", 200, 0.01)
        metrics.flush()
        os._exit(0)
    os.waitpid(child, 0)
    metrics.request("/r", 200, 0.01)
    metrics.flush()
    print(child)
    """
)


def test_a_forked_worker_writes_its_own_file(tmp_path):
    """The pid prometheus_client tells processes apart by is cached (no getpid per update, issue 7) and refreshed
    in a forked child: parent and child keep separate files and the totals add up."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", _FORKING_WORKER], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    child = int(result.stdout)
    files = sorted(path.name for path in tmp_path.iterdir())
    assert f"counter_{child}.db" in files and len([name for name in files if name.startswith("counter_")]) == 2
    text = Metrics(multiprocess_dir=str(tmp_path)).render().decode()
    assert sample(text, "gateway_requests_total", route="/r", status="200") == 4


def test_counters_are_batched_until_a_flush_and_a_scrape_flushes() -> None:
    """Per-request counters are plain integers until flush() (issue 7: a lock per inc); render() flushes first."""
    metrics = Metrics()
    metrics.request("/r", 200, 0.01)
    metrics.token("valid")
    metrics.cache(2, 1)
    assert metrics.requests.labels("/r", "200")._value.get() == 0  # not yet in prometheus_client
    text = metrics.render().decode()
    assert sample(text, "gateway_requests_total", route="/r", status="200") == 1
    assert sample(text, "gateway_token_verifications_total", outcome="valid") == 1
    assert sample(text, "gateway_token_cache_total", result="hit") == 2
    assert sample(text, "gateway_token_cache_total", result="miss") == 1
    assert sample(text, "gateway_request_duration_seconds_count", route="/r") == 1
    metrics.flush()  # nothing counted twice
    assert sample(metrics.render().decode(), "gateway_requests_total", route="/r", status="200") == 1


# Latencies on bucket bounds, between them, below the first and past the last (Prometheus buckets are "le").
LATENCIES = [0.0, 0.0001, 0.005, 0.0050001, 0.01, 0.3, 0.3, 2.5, 9.99, 10.0, 11.0, 1e6]


def test_batched_latencies_render_exactly_as_observed_ones() -> None:
    """The histogram's batch (bucket counts + sum, added at flush through prometheus_client internals) must expose
    what observing each request would: the check that those internals are still what the batch assumes."""
    batched, direct = Metrics(), Metrics()
    for seconds in LATENCIES:
        batched.request("/r", 200, seconds)
        direct.request("/r", 200, seconds)
        direct.latency.labels("/r").observe(seconds)  # the reference, through the public API
    direct._latencies.clear()  # drop direct's own batch: its histogram holds only the reference observations

    def histogram(metrics: Metrics) -> list[str]:
        return [line for line in metrics.render().decode().splitlines() if "request_duration" in line]

    assert batched.latency.labels("/r")._sum.get() == 0  # nothing in prometheus_client before a flush
    lines = histogram(batched)
    assert lines == histogram(direct)
    assert sample("\n".join(lines), "gateway_request_duration_seconds_count", route="/r") == len(LATENCIES)
    batched.flush()  # nothing counted twice
    assert histogram(batched) == lines


def test_latencies_fall_back_to_observe_when_the_histogram_is_not_as_expected(monkeypatch) -> None:
    from gateway import metrics as module

    metrics = Metrics()
    child = metrics.latency.labels("/r")
    monkeypatch.delattr(child, "_upper_bounds")
    latencies = module._Latencies(child)
    assert latencies.observe == child.observe  # per request, through the public API
