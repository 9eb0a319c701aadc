"""The identity side: our identity service and Better Auth 1.7.25 side by side in the same run.

- throughput of ``GET /api/auth/token`` and ``GET /api/auth/get-session`` (``Authorization: Bearer`` with the
  ``set-auth-token`` of a sign-up) and ``GET /api/auth/jwks``, wrk ``-c10`` like the reference measurement;
- sign-in latency: sequential ``POST /api/auth/sign-in/email`` on one keep-alive connection, p50/p90, and the
  server's CPU per sign-in;
- the burst check of issue 3: while wrk loads ``/jwks`` and ``/token`` (two wrk processes), 50 sign-ins
  arrive at once; ``/jwks`` and ``/token`` p99 must stay under 50 ms. The same load without the burst is
  measured just before, as the baseline.

Both services run with their rate limits off (Better Auth's are off outside NODE_ENV=production; ours are
switched off with ``IDENTITY_RATE_LIMIT=off``) so the bench's many sign-ins from one address are not 429s,
and on SQLite files in the bench's temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any

import httpx

from bench import prereqs, procs, wrk
from bench.proxybench import ROOT, free_port, rotate
from bench.stats import RatioSpec, Run, check, percentile

SERVICES = ("ours", "better-auth")
ENDPOINTS = {"token": "/api/auth/token", "get-session": "/api/auth/get-session", "jwks": "/api/auth/jwks"}
PASSWORD = "bench-password-1234"  # a throwaway account in a throwaway database
BURST_SIZE = 50
BURST_P99_LIMIT_MS = 50.0

RATIO_SPECS = (
    RatioSpec(
        "identity /token: ours / Better Auth", ("identity-token", "ours"), ("identity-token", "better-auth"), goal=10
    ),
    RatioSpec(
        "identity /get-session: ours / Better Auth",
        ("identity-get-session", "ours"),
        ("identity-get-session", "better-auth"),
        goal=10,
    ),
    RatioSpec(
        "identity /jwks: ours / Better Auth", ("identity-jwks", "ours"), ("identity-jwks", "better-auth"), goal=20
    ),
)


@dataclass
class Service:
    name: str
    port: int
    proc: procs.Proc
    bearer: str = ""
    accounts: list[str] = field(default_factory=list)
    min_bytes: dict[str, int] = field(default_factory=dict)  # per endpoint: a real answer is at least this big

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@dataclass
class SignInRound:
    round: int
    service: str
    latencies_ms: list[float]
    cpu_ms_per_sign_in: float
    failures: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "service": self.service,
            "p50_ms": percentile(self.latencies_ms, 50),
            "p90_ms": percentile(self.latencies_ms, 90),
            "latencies_ms": [round(value, 2) for value in self.latencies_ms],
            "cpu_ms_per_sign_in": self.cpu_ms_per_sign_in,
            "failures": self.failures,
        }


def _client(**kwargs: Any) -> httpx.Client:
    """A client like an API client using Bearer: no cookies kept (a Cookie header would make the services
    demand an Origin, better-auth-wire.md 2.9) and no proxy from the environment."""
    return httpx.Client(trust_env=False, cookies=_refuse_all(), **kwargs)


def _refuse_all() -> CookieJar:
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


class IdentityRig:
    def __init__(self, processes: procs.Processes, work: Path, cpus: str | None) -> None:
        self.processes = processes
        self.work = work
        self.cpus = cpus
        self.services: dict[str, Service] = {}
        self.static_script, _ = wrk.write_scripts(work)

    def start(self, accounts: int) -> None:
        port = free_port()
        env = {
            **os.environ,
            "IDENTITY_SECRET": secrets.token_urlsafe(48),
            "IDENTITY_DATABASE_URL": f"sqlite+aiosqlite:///{self.work / 'identity.db'}",
            "IDENTITY_BASE_URL": f"http://127.0.0.1:{port}",
            "IDENTITY_JWT_ALG": "EdDSA",
            "IDENTITY_RATE_LIMIT": "off",
            "PYTHONUNBUFFERED": "1",
        }
        migrate = subprocess.run(
            [sys.executable, "-m", "identity", "migrate"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"identity migrate failed:\n{migrate.stdout}{migrate.stderr}")
        argv = [sys.executable, "-m", "identity", "serve", "--host", "127.0.0.1", "--port", str(port)]
        ours = self.processes.start("identity", argv, cpus=self.cpus, env=env, cwd=ROOT)
        self.services["ours"] = Service("ours", port, ours)

        port = free_port()
        ba_env = {**os.environ, "BA_SECRET": secrets.token_urlsafe(48), "BA_JWT_ALG": "EdDSA"}
        ba_env.pop("NODE_ENV", None)  # rate limiting stays off, as for ours (module docstring)
        argv = ["node", "server.mjs", str(port), str(self.work / "better-auth.db")]
        ba = self.processes.start("better-auth", argv, cpus=self.cpus, env=ba_env, cwd=prereqs.BETTER_AUTH_DIR)
        self.services["better-auth"] = Service("better-auth", port, ba)

        for service, path in ((self.services["ours"], "/readyz"), (self.services["better-auth"], "/api/auth/ok")):

            def ready(service: Service = service, path: str = path) -> bool:
                try:
                    return httpx.get(service.url(path), timeout=1.0, trust_env=False).status_code == 200
                except httpx.HTTPError:
                    return False

            procs.wait_until(ready, 60, service.name, service.proc)

        for service in self.services.values():
            self._sign_up(service, accounts)
            self._probe(service)

    def _sign_up(self, service: Service, count: int) -> None:
        with _client(timeout=30.0) as client:
            for index in range(count):
                email = f"bench{index}-{secrets.token_hex(4)}@example.com"
                response = client.post(
                    service.url("/api/auth/sign-up/email"),
                    json={"name": f"Bench {index}", "email": email, "password": PASSWORD},
                )
                if response.status_code != 200:
                    raise RuntimeError(f"{service.name} sign-up: {response.status_code} {response.text[:200]}")
                service.accounts.append(email)
                if not service.bearer:
                    service.bearer = response.headers["set-auth-token"]

    def _probe(self, service: Service) -> None:
        """Each endpoint answers with the real thing before it is measured (get-session answers 200 `null`
        without a session, so a status check alone would not do), and records the size of that answer."""
        headers = {"authorization": f"Bearer {service.bearer}"}
        with _client(timeout=10.0) as client:
            for name, path in ENDPOINTS.items():
                response = client.get(service.url(path), headers=headers)
                body = response.json() if response.status_code == 200 else None
                good = {
                    "token": isinstance(body, dict) and str(body.get("token", "")).count(".") == 2,
                    "get-session": isinstance(body, dict) and "session" in body and "user" in body,
                    "jwks": isinstance(body, dict) and bool(body.get("keys")),
                }[name]
                if not good:
                    raise RuntimeError(f"{service.name} {path}: {response.status_code} {response.text[:200]!r}")
                service.min_bytes[name] = len(response.content)

    # -- throughput -------------------------------------------------------------------------------------

    def measure(
        self,
        service_name: str,
        endpoint: str,
        round_number: int,
        *,
        duration: float,
        connections: int,
        load_cpus: str | None,
        on_start: Callable[[], None] | None = None,
    ) -> Run:
        service = self.services[service_name]
        argv = wrk.command(
            service.url(ENDPOINTS[endpoint]),
            script=self.static_script,
            threads=1,
            connections=connections,
            duration=duration,
            headers=[f"Authorization: Bearer {service.bearer}"],
            cpus=load_cpus,
        )
        if on_start is not None:
            on_start()
        load1 = procs.loadavg()[0]
        before = procs.cpu_seconds(service.proc.pid)
        result = wrk.run(argv, duration)
        after = procs.cpu_seconds(service.proc.pid)
        run = Run(
            round=round_number,
            scenario=f"identity-{endpoint}",
            target=service_name,
            rps=result.rps,
            p50_ms=result.p50_ms,
            p99_ms=result.p99_ms,
            cpu_us_per_request=(after - before) * 1e6 / result.requests if result.requests else None,
            requests=result.requests,
            non_2xx=result.non_2xx,
            socket_errors=result.socket_errors,
            load1=load1,
        )
        check(run, token_cache=False)
        if result.requests and result.bytes / result.requests < service.min_bytes[endpoint]:
            run.problems.append(
                f"{result.bytes / result.requests:.0f} bytes per response < the {service.min_bytes[endpoint]}-byte body"
                " of a real answer"
            )
        return run

    # -- sign-in ------------------------------------------------------------------------------------------

    def sign_ins(self, service_name: str, round_number: int, count: int) -> SignInRound:
        service = self.services[service_name]
        latencies, failures = [], 0
        with _client(timeout=30.0) as client:
            client.get(service.url("/api/auth/ok"))  # open the keep-alive connection outside the timing
            before = procs.cpu_seconds(service.proc.pid)
            for index in range(count):
                email = service.accounts[index % len(service.accounts)]
                start = time.perf_counter()
                response = client.post(
                    service.url("/api/auth/sign-in/email"), json={"email": email, "password": PASSWORD}
                )
                latencies.append((time.perf_counter() - start) * 1000)
                failures += response.status_code != 200
            after = procs.cpu_seconds(service.proc.pid)
        return SignInRound(round_number, service_name, latencies, (after - before) * 1000 / count, failures)

    def burst(
        self, service_name: str, *, window: float, connections: int, load_cpus: str | None, with_burst: bool
    ) -> dict[str, Any]:
        """/jwks and /token under wrk load for ``window`` seconds; with ``with_burst``, 50 sign-ins start
        after a short lead-in and the load runs until they have all answered (wrk is stopped with SIGINT,
        on which it prints its summary), so the measured window covers the whole burst however long."""
        service = self.services[service_name]
        headers = [f"Authorization: Bearer {service.bearer}"]
        lead_in = min(0.5, window / 4)
        run_for = window + 120 if with_burst else window  # with a burst, the SIGINT below ends the run
        loads = {
            endpoint: subprocess.Popen(
                wrk.command(
                    service.url(ENDPOINTS[endpoint]),
                    script=self.static_script,
                    threads=1,
                    connections=connections,
                    duration=run_for,
                    headers=headers,
                    cpus=load_cpus,
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for endpoint in ("jwks", "token")
        }
        burst: dict[str, Any] = {}
        started = time.monotonic()
        try:
            if with_burst:
                time.sleep(lead_in)
                burst = asyncio.run(self._burst(service))
                time.sleep(lead_in)
                for popen in loads.values():
                    popen.send_signal(signal.SIGINT)
            results = {}
            for endpoint, popen in loads.items():
                out, _ = popen.communicate(timeout=run_for + 60)
                results[endpoint] = wrk.parse(out)
        finally:
            for popen in loads.values():
                if popen.poll() is None:
                    popen.kill()
                    popen.wait()
        return {
            "service": service_name,
            "burst": with_burst,
            "window_s": round(time.monotonic() - started, 2),
            **{
                f"{endpoint}_{key}": value
                for endpoint, result in results.items()
                for key, value in (
                    ("p50_ms", result.p50_ms),
                    ("p99_ms", result.p99_ms),
                    ("rps", result.rps),
                    ("failed", result.failed),
                )
            },
            **burst,
        }

    async def _burst(self, service: Service) -> dict[str, Any]:
        limits = httpx.Limits(max_connections=BURST_SIZE, max_keepalive_connections=BURST_SIZE)
        async with httpx.AsyncClient(trust_env=False, cookies=_refuse_all(), timeout=60.0, limits=limits) as client:

            async def one(email: str) -> tuple[int, float]:
                start = time.perf_counter()
                response = await client.post(
                    service.url("/api/auth/sign-in/email"), json={"email": email, "password": PASSWORD}
                )
                return response.status_code, (time.perf_counter() - start) * 1000

            start = time.perf_counter()
            outcomes = await asyncio.gather(
                *(one(service.accounts[i % len(service.accounts)]) for i in range(BURST_SIZE))
            )
            wall = (time.perf_counter() - start) * 1000
        statuses: dict[str, int] = {}
        for status, _ in outcomes:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        return {
            "burst_sign_ins": BURST_SIZE,
            "burst_statuses": statuses,
            "burst_wall_ms": wall,
            "burst_sign_in_p50_ms": statistics.median(latency for _, latency in outcomes),
        }


def run_round(
    rig: IdentityRig,
    round_number: int,
    *,
    duration: float,
    connections: int,
    sign_ins: int,
    load_cpus: str | None,
    report: Any,
) -> tuple[list[Run], list[SignInRound]]:
    runs, sign_in_rounds = [], []
    order = rotate(SERVICES, round_number - 1)
    for endpoint in ENDPOINTS:
        for service in order:
            run = rig.measure(
                service, endpoint, round_number, duration=duration, connections=connections, load_cpus=load_cpus
            )
            report(run)
            runs.append(run)
    for service in order:
        sign_in_rounds.append(rig.sign_ins(service, round_number, sign_ins))
    return runs, sign_in_rounds
