"""The proxy side: a trivial upstream, nginx as a plain proxy, HAProxy ``jwt_verify`` (ES256 and RS256) and
our gateway, measured with wrk in alternating rounds.

Scenarios (targets are measured in a rotating order each round, so drift hits every target alike):

- ``warm``: one token reused for the whole run (our gateway's verified-token cache path);
- ``cold``: a fresh token per request: a file of distinct tokens, one user each, rotated by wrk's Lua
  script. Our gateway gets a fresh set for every run (its cache would remember an old one). HAProxy keeps
  no verified-token cache, so it reuses one set per algorithm across rounds;
- ``workers``: our gateway with ``--workers 1`` and ``--workers 2``, warm and cold, with the gateway, the
  upstream and wrk all free to use every core (the other scenarios pin proxies to one core and wrk to the
  other).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import configs, keys, procs, wrk
from bench.stats import AbsoluteGoal, RatioSpec, Run, check

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("warm", "cold", "workers")
WARM_TARGETS = (
    "nginx",
    "haproxy-ES256",
    "haproxy-RS256",
    "gateway-EdDSA",
    "gateway-ES256",
    "gateway-EdDSA-log",
    "uvicorn-constant",
)
# nginx in the cold scenario calibrates the load side: the rotating Lua script costs wrk more than -H does.
COLD_TARGETS = ("nginx", "haproxy-ES256", "haproxy-RS256", "gateway-EdDSA", "gateway-ES256")
WORKER_TARGETS = ("gateway-1w", "gateway-2w")

RATIO_SPECS = (
    RatioSpec("warm: ours EdDSA / HAProxy ES256", ("warm", "gateway-EdDSA"), ("warm", "haproxy-ES256"), goal=1.2),
    RatioSpec("warm: ours ES256 / HAProxy ES256", ("warm", "gateway-ES256"), ("warm", "haproxy-ES256"), goal=1.2),
    RatioSpec("warm: ours EdDSA / HAProxy RS256", ("warm", "gateway-EdDSA"), ("warm", "haproxy-RS256"), goal=1.0),
    RatioSpec("warm: ours ES256 / HAProxy RS256", ("warm", "gateway-ES256"), ("warm", "haproxy-RS256"), goal=1.0),
    RatioSpec("warm: ours EdDSA / nginx", ("warm", "gateway-EdDSA"), ("warm", "nginx"), goal=0.5),
    RatioSpec("warm: ours ES256 / nginx", ("warm", "gateway-ES256"), ("warm", "nginx"), goal=0.5),
    RatioSpec(
        "warm CPU/req: ours with / without access log",
        ("warm", "gateway-EdDSA-log"),
        ("warm", "gateway-EdDSA"),
        metric="cpu_us_per_request",
    ),
    RatioSpec("warm: ours EdDSA / bare uvicorn app", ("warm", "gateway-EdDSA"), ("warm", "uvicorn-constant")),
    RatioSpec(
        "warm p99: ours EdDSA / HAProxy ES256",
        ("warm", "gateway-EdDSA"),
        ("warm", "haproxy-ES256"),
        metric="p99_ms",
        goal=1.0,
    ),
    RatioSpec("cold: ours EdDSA / HAProxy ES256", ("cold", "gateway-EdDSA"), ("cold", "haproxy-ES256"), goal=0.5),
    RatioSpec("cold: ours ES256 / HAProxy ES256", ("cold", "gateway-ES256"), ("cold", "haproxy-ES256"), goal=0.5),
    RatioSpec("cold: ours EdDSA / HAProxy RS256", ("cold", "gateway-EdDSA"), ("cold", "haproxy-RS256")),
    RatioSpec("cold: ours ES256 / HAProxy RS256", ("cold", "gateway-ES256"), ("cold", "haproxy-RS256")),
    # CPU per request is what contention on a shared machine disturbs least (lower is better; no goal in issue 7).
    RatioSpec(
        "warm CPU/req: ours EdDSA / HAProxy ES256",
        ("warm", "gateway-EdDSA"),
        ("warm", "haproxy-ES256"),
        metric="cpu_us_per_request",
    ),
    RatioSpec(
        "cold CPU/req: ours EdDSA / HAProxy ES256",
        ("cold", "gateway-EdDSA"),
        ("cold", "haproxy-ES256"),
        metric="cpu_us_per_request",
    ),
    RatioSpec("workers warm: 2 / 1", ("workers-warm", "gateway-2w"), ("workers-warm", "gateway-1w"), goal=1.7),
    RatioSpec("workers cold: 2 / 1", ("workers-cold", "gateway-2w"), ("workers-cold", "gateway-1w"), goal=1.7),
)


# Issue 7: "<= 150 µs CPU per proxied request" (warm).
ABSOLUTE_GOALS = (
    AbsoluteGoal("warm CPU/req, ours EdDSA", "warm", "gateway-EdDSA", "cpu_us_per_request", 150.0, "µs"),
    AbsoluteGoal("warm CPU/req, ours ES256", "warm", "gateway-ES256", "cpu_us_per_request", 150.0, "µs"),
)


@dataclass(frozen=True)
class Placement:
    """Which CPUs the proxies (with the upstream) and the load generator get; None = not pinned."""

    proxy: str | None
    load: str | None
    every: str | None
    note: str
    cores: int  # the CPUs the workers scenario shares between the gateway, wrk and the upstream


def placement() -> Placement:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Placement(None, None, None, f"not pinned: only CPU(s) {cpus} available", len(cpus))
    every = ",".join(str(cpu) for cpu in cpus)
    return Placement(
        str(cpus[0]),
        str(cpus[1]),
        every,
        f"proxy + upstream + identity servers pinned to CPU {cpus[0]}, wrk and this bench to CPU {cpus[1]} "
        f"(taskset); the workers scenario lets everything use CPUs {every}",
        len(cpus),
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def repin(root: int, cpus: str) -> None:
    """Move a running process tree (every thread) to ``cpus``."""
    mask = {int(cpu) for cpu in cpus.split(",")}
    for pid in procs.process_tree(root):
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), mask)


@dataclass
class Target:
    name: str
    port: int
    proc: procs.Proc
    alg: str  # the token algorithm sent (nginx gets an ES256 token it ignores, so requests are the same size)
    caches_tokens: bool
    checks_tokens: bool = True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class ProxyRig:
    """Starts every process of the proxy side; ``targets`` maps a target name to what wrk hits."""

    def __init__(self, processes: procs.Processes, work: Path, where: Placement, *, workers: bool) -> None:
        self.processes = processes
        self.work = work
        self.where = where
        self.keys = keys.generate()
        self.jwks = keys.write_public(self.keys, work)
        self.static_script, self.rotate_script = wrk.write_scripts(work)
        self.targets: dict[str, Target] = {}
        self.upstream_port = free_port()
        self.with_workers = workers
        self.warm_user = keys.user_id()
        self.warm_tokens = {alg: key.mint(self.warm_user) for alg, key in self.keys.items()}
        self.shared_cold_files: dict[str, tuple[Path, int]] = {}

    # -- start-up ---------------------------------------------------------------------------------------

    def _nginx(self, name: str, config: str) -> procs.Proc:
        (self.work / f"{name}-tmp").mkdir(exist_ok=True)
        path = self.work / f"{name}.conf"
        path.write_text(config)
        argv = ["nginx", "-p", str(self.work), "-e", str(self.work / f"{name}-error.log"), "-c", str(path)]
        return self.processes.start(name, argv, cpus=self.where.proxy)

    def _gateway(self, name: str, port: int, workers: int, cpus: str | None, *, access_log: bool = False) -> procs.Proc:
        config = self.work / "gateway.toml"
        if not config.exists():
            config.write_text(configs.gateway_toml(self.upstream_port, issuer=keys.ISSUER, audience=keys.AUDIENCE))
        env = {**os.environ, "EDGE_PROOF_SECRET": secrets.token_urlsafe(48), "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "gateway", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        # nginx and HAProxy run without access logs here, so the compared gateways do too; "gateway-EdDSA-log"
        # measures the same gateway with its JSON access log on (written to the bench's log file).
        argv += ["--workers", str(workers), *([] if access_log else ["--no-access-log"])]
        return self.processes.start(name, argv, cpus=cpus, env=env, cwd=ROOT)

    def start(self) -> None:
        upstream = self._nginx("upstream", configs.nginx_upstream(self.work, self.upstream_port, self.jwks))
        self.upstream = upstream
        self._wait_http(f"http://127.0.0.1:{self.upstream_port}/jwks.json", upstream)

        port = free_port()
        proxy = self._nginx("nginx-proxy", configs.nginx_proxy(self.work, port, self.upstream_port))
        self.targets["nginx"] = Target("nginx", port, proxy, "ES256", caches_tokens=False, checks_tokens=False)

        for alg in ("ES256", "RS256"):
            port = free_port()
            path = self.work / f"haproxy-{alg}.cfg"
            pem = self.work / f"{alg}.pub.pem"
            path.write_text(
                configs.haproxy(
                    port, self.upstream_port, alg=alg, public_pem=pem, issuer=keys.ISSUER, audience=keys.AUDIENCE
                )
            )
            proc = self.processes.start(f"haproxy-{alg}", ["haproxy", "-db", "-f", str(path)], cpus=self.where.proxy)
            self.targets[f"haproxy-{alg}"] = Target(f"haproxy-{alg}", port, proc, alg, caches_tokens=False)

        # The floor of a Python server here: uvicorn (same loop and parser as the gateway) answering a constant.
        port = free_port()
        argv = [sys.executable, "-m", "uvicorn", "bench.constant_app:app", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--no-access-log", "--no-proxy-headers", "--no-server-header", "--log-level", "warning"]
        proc = self.processes.start("uvicorn-constant", argv, cpus=self.where.proxy, cwd=ROOT)
        self.targets["uvicorn-constant"] = Target(
            "uvicorn-constant", port, proc, "ES256", caches_tokens=False, checks_tokens=False
        )

        port = free_port()
        gateway = self._gateway("gateway", port, 1, self.where.proxy)
        for alg in ("EdDSA", "ES256"):
            self.targets[f"gateway-{alg}"] = Target(f"gateway-{alg}", port, gateway, alg, caches_tokens=True)
        port = free_port()
        logging_gateway = self._gateway("gateway-log", port, 1, self.where.proxy, access_log=True)
        self.targets["gateway-EdDSA-log"] = Target(
            "gateway-EdDSA-log", port, logging_gateway, "EdDSA", caches_tokens=True
        )
        if self.with_workers:
            for workers in (1, 2):
                port = free_port()
                proc = self._gateway(f"gateway-{workers}w", port, workers, self.where.every)
                self.targets[f"gateway-{workers}w"] = Target(
                    f"gateway-{workers}w", port, proc, "EdDSA", caches_tokens=True
                )

        for target in self.targets.values():
            if target.name.startswith("gateway"):
                self._wait_http(target.url("/readyz"), target.proc, timeout=60)
            else:
                self._wait_http(target.url(f"/api/{self.warm_user}/items"), target.proc, any_status=True)

    @staticmethod
    def _wait_http(url: str, proc: procs.Proc, *, any_status: bool = False, timeout: float = 20) -> None:
        def ready() -> bool:
            try:
                status = httpx.get(url, timeout=1.0, trust_env=False).status_code
            except httpx.HTTPError:
                return False
            return any_status or status == 200

        procs.wait_until(ready, timeout, url, proc)

    # -- correctness before speed -----------------------------------------------------------------------

    def probe(self) -> list[str]:
        """Every target answers a valid request with the upstream's body, and (where it checks tokens)
        refuses a missing token (401), a bad signature (401), an expired token (401) and another user's
        path (403). A fast target that lets these through would not be doing the work being compared."""
        problems = []
        other = keys.user_id()
        with httpx.Client(trust_env=False, timeout=5.0) as client:
            for target in self.targets.values():
                token = self.warm_tokens[target.alg]
                path = f"/api/{self.warm_user}/items"
                expired = self.keys[target.alg].mint(self.warm_user, now=int(time.time()) - 2 * keys.TOKEN_LIFETIME)
                cases: list[tuple[str, str, dict[str, str], Callable[[httpx.Response], bool]]] = [
                    ("valid token", path, {"authorization": f"Bearer {token}"}, _is_upstream_body),
                ]
                if target.checks_tokens:
                    head, payload, signature = token.split(".")
                    forged = f"{head}.{payload}.{signature[::-1]}"
                    cases += [
                        ("no token", path, {}, _status(401)),
                        ("bad signature", path, {"authorization": f"Bearer {forged}"}, _status(401)),
                        ("expired", path, {"authorization": f"Bearer {expired}"}, _status(401)),
                        (
                            "other user's path",
                            f"/api/{other}/items",
                            {"authorization": f"Bearer {token}"},
                            _status(403),
                        ),
                    ]
                for label, case_path, headers, ok in cases:
                    try:
                        response = client.get(target.url(case_path), headers=headers)
                    except httpx.HTTPError as exc:
                        problems.append(f"{target.name}: {label}: {exc!r}")
                        continue
                    if not ok(response):
                        problems.append(f"{target.name}: {label}: got {response.status_code} {response.text[:120]!r}")
        return problems

    # -- measuring ---------------------------------------------------------------------------------------

    def cold_file(self, target: Target, count: int, label: str) -> tuple[Path, int]:
        if not target.caches_tokens and target.alg in self.shared_cold_files:
            return self.shared_cold_files[target.alg]
        path = self.work / f"tokens-{label}.txt"
        keys.write_token_file(self.keys[target.alg], count, path)
        if not target.caches_tokens:
            self.shared_cold_files[target.alg] = (path, count)
        return path, count

    def measure(
        self,
        target_name: str,
        scenario: str,
        round_number: int,
        *,
        cold: bool,
        duration: float,
        threads: int,
        connections: int,
        cold_tokens: int,
        load_cpus: str | None,
        on_start: Callable[[], None] | None = None,
    ) -> Run:
        """One wrk run; ``on_start`` is called once the tokens are ready, just before wrk starts (the
        profiler starts there, so it samples the load and not the token minting)."""
        target = self.targets[target_name]
        tokens: int | None = None
        if cold:
            token_file, tokens = self.cold_file(target, cold_tokens, f"{scenario}-{target_name}-r{round_number}")
            argv = wrk.command(
                target.url("/"),
                script=self.rotate_script,
                threads=threads,
                connections=connections,
                duration=duration,
                script_args=[str(token_file)],
                cpus=load_cpus,
            )
        else:
            argv = wrk.command(
                target.url(f"/api/{self.warm_user}/items"),
                script=self.static_script,
                threads=threads,
                connections=connections,
                duration=duration,
                headers=[f"Authorization: Bearer {self.warm_tokens[target.alg]}"],
                cpus=load_cpus,
            )
        if on_start is not None:
            on_start()
        load1 = procs.loadavg()[0]
        before = procs.cpu_seconds(target.proc.pid)
        load_before = procs.children_cpu_seconds() + procs.cpu_seconds(self.upstream.pid)
        result = wrk.run(argv, duration)
        after = procs.cpu_seconds(target.proc.pid)
        load_after = procs.children_cpu_seconds() + procs.cpu_seconds(self.upstream.pid)
        if target.proc.popen.poll() is not None:
            raise RuntimeError(f"{target.name} exited during the run:\n{target.proc.tail()}")
        cpu = (after - before) * 1e6 / result.requests if result.requests else None
        # Not for the profiler's extra run: py-spy, a child too, may be reaped inside the window.
        load_cpu = (load_after - load_before) * 1e6 / result.requests if result.requests and on_start is None else None
        run = Run(
            round=round_number,
            scenario=scenario,
            target=target_name,
            rps=result.rps,
            p50_ms=result.p50_ms,
            p99_ms=result.p99_ms,
            cpu_us_per_request=cpu,
            requests=result.requests,
            non_2xx=result.non_2xx,
            socket_errors=result.socket_errors,
            load1=load1,
            tokens=tokens,
            load_cpu_us_per_request=load_cpu,
        )
        return check(run, token_cache=target.caches_tokens)

    def workers_mode(self, on: bool) -> None:
        """The workers scenario gives the upstream every core too; the others keep it on the proxy core."""
        if self.where.every is not None and self.where.proxy is not None:
            repin(self.upstream.pid, self.where.every if on else self.where.proxy)


def _is_upstream_body(response: httpx.Response) -> bool:
    return response.status_code == 200 and response.text == configs.UPSTREAM_BODY


def _status(code: int) -> Callable[[httpx.Response], bool]:
    return lambda response: response.status_code == code


def rotate(items: tuple[str, ...], by: int) -> list[str]:
    """The round's order: each round starts one target later, so no target is always first or last."""
    shift = by % len(items) if items else 0
    return list(items[shift:] + items[:shift])


def run_round(
    rig: ProxyRig,
    round_number: int,
    scenarios: tuple[str, ...],
    *,
    duration: float,
    threads: int,
    connections: int,
    cold_tokens: int,
    report: Callable[[Run], None],
) -> list[Run]:
    runs = []
    plan: list[tuple[str, tuple[str, ...], bool]] = []
    if "warm" in scenarios:
        plan.append(("warm", WARM_TARGETS, False))
    if "cold" in scenarios:
        plan.append(("cold", COLD_TARGETS, True))
    if "workers" in scenarios:
        plan += [("workers-warm", WORKER_TARGETS, False), ("workers-cold", WORKER_TARGETS, True)]
    for scenario, targets, cold in plan:
        workers = scenario.startswith("workers")
        rig.workers_mode(workers)
        try:
            for name in rotate(targets, round_number - 1):
                run = rig.measure(
                    name,
                    scenario,
                    round_number,
                    cold=cold,
                    duration=duration,
                    threads=threads,
                    connections=connections,
                    cold_tokens=cold_tokens,
                    load_cpus=rig.where.every if workers else rig.where.load,
                )
                report(run)
                runs.append(run)
        finally:
            rig.workers_mode(False)
    return runs
