"""A bounded soak of the real stack (issue 8, "Sustained load").

    python -m bench.soak [--duration 300] [--rate 40] [--users 4] [--gateway-workers 1] [--json FILE]

Starts identity, the tasks backend and the gateway as ``make run`` does (scripts/devstack.py: free loopback ports,
a temporary data directory, SQLite unless ``--database-url`` names a PostgreSQL database for both services), signs
up ``--users`` users through the gateway, then drives a steady ``--rate`` of requests from a separate process for
``--duration`` seconds: valid reads and writes (create, toggle, delete, so each user's list stays small), invalid
tokens (tampered, garbage, missing), owner mismatches (one user's token on another's path) and public requests
(pages, JWKS, sessions), renewing each user's JWT every ``--renew-every`` seconds as the web page does. Meanwhile
it samples the resident memory and open file descriptors of every process every ``--sample-every`` seconds and
scans every log line.

Verdict (exit status 0 or 1): zero unexpected statuses, no error in any log (an ERROR/CRITICAL line, a traceback,
or an access-log line with a 5xx), resident memory flat after the warm-up (growth at most 10 % or 8 MiB, whichever
is larger), no file-descriptor growth after the warm-up (at most 8). The figures are printed and, with
``--json``, written as JSON.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any

import httpx

from bench.procs import process_tree
from scripts.devstack import Stack, free_port

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "soak: correct horse battery staple"

#: Request kinds, their share of the load, and the statuses each may get.
MIX: dict[str, tuple[float, frozenset[int]]] = {
    "read": (0.30, frozenset({200})),
    "write": (0.20, frozenset({200, 201, 204})),
    "invalid_token": (0.15, frozenset({401})),
    "owner_mismatch": (0.10, frozenset({403})),
    "public": (0.25, frozenset({200})),
}
MAX_TASKS = 10  # per user: creates past this delete instead, so the database stays small


# --- /proc ------------------------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (``VmRSS``), or None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


# --- the load (runs in its own process: python -m bench.soak load < spec.json) ----------------------------------


def _no_cookie_client(url: str) -> httpx.Client:
    jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return httpx.Client(base_url=url, timeout=10, trust_env=False, cookies=jar)


class _User:
    def __init__(self, data: dict[str, str]) -> None:
        self.id = data["id"]
        self.session = data["session"]
        self.jwt = data["jwt"]
        self.renewed = time.monotonic()
        self.tasks: collections.deque[str] = collections.deque()
        self.lock = threading.Lock()

    def bearer(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.jwt}"}


class Load:
    """Open-loop load: request ``i`` is due at ``start + i / rate`` whatever happened to the ones before it."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.url: str = spec["url"]
        self.rate: float = spec["rate"]
        self.duration: float = spec["duration"]
        self.threads: int = spec["threads"]
        self.renew_every: float = spec["renew_every"]
        self.users = [_User(user) for user in spec["users"]]
        self.seed: int = spec.get("seed", 1)
        self._slot = 0
        self._lock = threading.Lock()
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)
        self.statuses: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.unexpected: list[dict[str, Any]] = []
        self.unexpected_count = 0
        self.max_lateness = 0.0
        self.renewals = 0
        kinds, weights = zip(*((kind, share) for kind, (share, _) in MIX.items()), strict=True)
        self._kinds, self._weights = list(kinds), list(weights)

    def run(self) -> dict[str, Any]:
        self.start = time.monotonic()
        threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(self.threads)]
        for thread in threads:
            thread.start()
        last_report = self.start
        while any(thread.is_alive() for thread in threads):
            time.sleep(0.5)
            if time.monotonic() - last_report >= 30:
                last_report = time.monotonic()
                done = sum(sum(counter.values()) for counter in self.statuses.values())
                print(
                    f"  load: {last_report - self.start:5.0f} s, {done} requests, {self.unexpected_count} unexpected",
                    file=sys.stderr,
                    flush=True,
                )
        for thread in threads:
            thread.join()
        return self.summary(time.monotonic() - self.start)

    def _take(self) -> tuple[int, float] | None:
        with self._lock:
            index = self._slot
            self._slot += 1
        due = self.start + index / self.rate
        if due >= self.start + self.duration:
            return None
        return index, due

    def _worker(self) -> None:
        with _no_cookie_client(self.url) as client:
            while (slot := self._take()) is not None:
                index, due = slot
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    self.max_lateness = max(self.max_lateness, -delay)
                rng = random.Random(self.seed * 1_000_003 + index)
                kind = rng.choices(self._kinds, self._weights)[0]
                started = time.monotonic()
                status: int | str
                try:
                    status, detail = self._request(client, kind, rng)
                except httpx.HTTPError as exc:
                    status, detail = type(exc).__name__, str(exc)
                elapsed = time.monotonic() - started
                with self._lock:
                    self.latencies[kind].append(elapsed)
                    self.statuses[kind][str(status)] += 1
                    if status not in MIX[kind][1]:
                        self.unexpected_count += 1
                        if len(self.unexpected) < 30:
                            self.unexpected.append({"kind": kind, "status": status, "detail": detail[:300]})

    def _renew(self, client: httpx.Client, user: _User) -> None:
        with user.lock:
            if time.monotonic() - user.renewed < self.renew_every:
                return
            response = client.get("/api/auth/token", headers={"authorization": f"Bearer {user.session}"})
            if response.status_code == 200:
                user.jwt = response.json()["token"]
                user.renewed = time.monotonic()
                self.renewals += 1

    def _request(self, client: httpx.Client, kind: str, rng: random.Random) -> tuple[int, str]:
        user = rng.choice(self.users)
        self._renew(client, user)
        if kind == "read":
            response = client.get(f"/api/{user.id}/tasks", params={"limit": "20"}, headers=user.bearer())
        elif kind == "write":
            response = self._write(client, user, rng)
        elif kind == "invalid_token":
            how = rng.choice(["tampered", "garbage", "missing", "other-alg"])
            headers = {}
            if how == "tampered":
                head, payload, signature = user.jwt.split(".")
                flipped = "A" if signature[5] != "A" else "B"
                headers["authorization"] = f"Bearer {head}.{payload}.{signature[:5]}{flipped}{signature[6:]}"
            elif how == "garbage":
                headers["authorization"] = f"Bearer {secrets.token_urlsafe(rng.randint(8, 300))}"
            elif how == "other-alg":
                headers["authorization"] = "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."
            response = client.get(f"/api/{user.id}/tasks", headers=headers)
        elif kind == "owner_mismatch":
            other = rng.choice([u for u in self.users if u is not user])
            response = client.get(f"/api/{other.id}/tasks", headers=user.bearer())
        else:
            path = rng.choice(["/api/auth/ok", "/api/auth/jwks", "/login", "/signup", "/api/auth/get-session"])
            headers = {"authorization": f"Bearer {user.session}"} if path.endswith("get-session") else {}
            response = client.get(path, headers=headers)
            if path.endswith("get-session") and response.status_code == 200 and response.json() is None:
                return 599, "get-session answered null for a live session"
        return response.status_code, response.text

    def _write(self, client: httpx.Client, user: _User, rng: random.Random) -> httpx.Response:
        """Create a task, toggle one, or (past MAX_TASKS) delete the oldest. A task is taken off the user's list
        while a request works on it, so two threads never toggle one that the other deletes."""
        with user.lock:
            if len(user.tasks) >= MAX_TASKS:
                action, task = "delete", user.tasks.popleft()
            elif user.tasks and rng.random() < 0.3:
                action, task = "toggle", user.tasks.popleft()
            else:
                action, task = "create", ""
        base = f"/api/{user.id}/tasks"
        if action == "create":
            response = client.post(base, json={"title": f"soak {rng.random():.6f}"}, headers=user.bearer())
            if response.status_code == 201:
                with user.lock:
                    user.tasks.append(response.json()["id"])
            return response
        if action == "delete":
            return client.delete(f"{base}/{task}", headers=user.bearer())
        response = client.patch(f"{base}/{task}/complete", headers=user.bearer())
        with user.lock:
            user.tasks.append(task)
        return response

    def summary(self, elapsed: float) -> dict[str, Any]:
        kinds: dict[str, dict[str, Any]] = {}
        for kind, latencies in sorted(self.latencies.items()):
            ordered = sorted(latencies)
            kinds[kind] = {
                "requests": len(ordered),
                "statuses": dict(self.statuses[kind]),
                "p50_ms": round(1000 * ordered[len(ordered) // 2], 2),
                "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
                "max_ms": round(1000 * ordered[-1], 2),
            }
        total = sum(kind["requests"] for kind in kinds.values())
        return {
            "seconds": round(elapsed, 1),
            "requests": total,
            "achieved_rate": round(total / elapsed, 1) if elapsed else 0.0,
            "max_lateness_s": round(self.max_lateness, 3),
            "jwt_renewals": self.renewals,
            "unexpected": self.unexpected_count,
            "unexpected_examples": self.unexpected,
            "kinds": kinds,
        }


def load_main() -> int:
    spec = json.load(sys.stdin)
    print(json.dumps(Load(spec).run()))
    return 0


# --- logs -------------------------------------------------------------------------------------------------------


class LogScanner:
    """A file-like sink for the stack's log lines (Stack(echo=...)): counts lines per service and keeps those that
    report an error: ERROR/CRITICAL, a traceback, or a JSON access-log line with a 5xx status."""

    def __init__(self) -> None:
        self._buffer = ""
        self._lock = threading.Lock()
        self.lines: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []
        self.error_count = 0

    def isatty(self) -> bool:
        return False

    def flush(self) -> None:
        pass

    def write(self, text: str) -> int:
        with self._lock:
            self._buffer += text
            *complete, self._buffer = self._buffer.split("\n")
            for line in complete:
                self._scan(line)
        return len(text)

    def _scan(self, line: str) -> None:
        service, _, message = line.partition(" | ")
        service = service.strip()
        self.lines[service] += 1
        bad = message.startswith(("ERROR", "CRITICAL")) or "Traceback" in message or " ERROR " in message
        if message.startswith("{"):
            with contextlib.suppress(ValueError, AttributeError):
                status = json.loads(message).get("status")
                bad = bad or (isinstance(status, int) and status >= 500)
        if bad:
            self.error_count += 1
            if len(self.errors) < 30:
                self.errors.append(line[:300])


# --- sampling and verdict -----------------------------------------------------------------------------------------


def sample(stack: Stack) -> list[dict[str, Any]]:
    rows = []
    now = time.monotonic()
    for service in stack.services:
        if service.process is None:
            continue
        for pid in process_tree(service.process.pid):
            rows.append({"t": now, "service": service.name, "pid": pid, "rss_kib": rss_kib(pid), "fds": fd_count(pid)})
    return rows


def _slope_per_minute(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    xs, ys = zip(*points, strict=True)
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    denominator = sum((x - mean_x) ** 2 for x in xs)
    return 0.0 if denominator == 0 else 60 * sum((x - mean_x) * (y - mean_y) for x, y in points) / denominator


def analyse(samples: list[dict[str, Any]], started: float, warmup: float) -> list[dict[str, Any]]:
    """Per process: memory and descriptors at the end of the warm-up, at the end, their peaks and the trend."""
    by_pid: dict[tuple[str, int], list[dict[str, Any]]] = collections.defaultdict(list)
    for row in samples:
        if row["rss_kib"] is not None:
            by_pid[(row["service"], row["pid"])].append(row)
    report = []
    for (service, pid), rows in sorted(by_pid.items()):
        after = [row for row in rows if row["t"] - started >= warmup]
        if len(after) < 2:
            continue
        baseline_rss = statistics.median(row["rss_kib"] for row in after[:3])
        baseline_fds = min(row["fds"] for row in after[:3] if row["fds"] is not None)
        peak_rss = max(row["rss_kib"] for row in after)
        peak_fds = max(row["fds"] for row in after if row["fds"] is not None)
        growth = peak_rss - baseline_rss
        allowed = max(0.10 * baseline_rss, 8 * 1024)
        report.append(
            {
                "service": service,
                "pid": pid,
                "rss_start_kib": rows[0]["rss_kib"],
                "rss_after_warmup_kib": baseline_rss,
                "rss_end_kib": after[-1]["rss_kib"],
                "rss_peak_kib": peak_rss,
                "rss_growth_kib": growth,
                "rss_slope_kib_per_min": round(_slope_per_minute([(r["t"] - started, r["rss_kib"]) for r in after]), 1),
                "fds_after_warmup": baseline_fds,
                "fds_end": after[-1]["fds"],
                "fds_peak": peak_fds,
                "rss_flat": growth <= allowed,
                "fds_flat": peak_fds - baseline_fds <= 8,
            }
        )
    return report


# --- the run ------------------------------------------------------------------------------------------------------


def sign_up_users(url: str, count: int) -> list[dict[str, str]]:
    users = []
    with _no_cookie_client(url) as client:
        for index in range(count):
            email = f"soak-{index}-{secrets.token_hex(4)}@example.com"
            response = client.post(
                "/api/auth/sign-up/email", json={"name": f"soak {index}", "email": email, "password": PASSWORD}
            )
            response.raise_for_status()
            session = response.json()["token"]
            token = client.get("/api/auth/token", headers={"authorization": f"Bearer {session}"})
            token.raise_for_status()
            users.append({"id": response.json()["user"]["id"], "session": session, "jwt": token.json()["token"]})
    return users


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second, steady (default 40)")
    parser.add_argument("--users", type=int, default=4, help="users signed up and used (2..9, default 4)")
    parser.add_argument("--threads", type=int, default=8, help="load-generator threads (default 8)")
    parser.add_argument(
        "--renew-every",
        type=float,
        default=60.0,
        help="seconds between JWT renewals per user, as the web page does before expiry (default 60)",
    )
    parser.add_argument("--gateway-workers", type=int, default=1, help="gateway --workers (default 1)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples (default 5)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds excluded from the flatness checks (default duration/5, <=60)",
    )
    parser.add_argument("--database-url", help="PostgreSQL URL for identity and tasks (default: SQLite files)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args(argv)
    if not 2 <= args.users <= 9:  # identity allows 10 sign-ups per address per minute (rate limits stay on)
        parser.error("--users must be 2..9")
    if args.duration <= 0 or args.rate <= 0:
        parser.error("--duration and --rate must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    if (argv if argv is not None else sys.argv[1:])[:1] == ["load"]:
        return load_main()
    args = parse_args(argv)
    warmup = args.warmup if args.warmup is not None else min(60.0, args.duration / 5)
    data = Path(tempfile.mkdtemp(prefix="edge-soak-"))
    env = dict(os.environ)
    if args.database_url:
        env["IDENTITY_DATABASE_URL"] = env["TASKS_DATABASE_URL"] = args.database_url
    logs = LogScanner()
    ports = {"gateway": free_port(), "identity": free_port(), "tasks": free_port()}
    stack = Stack(data, ports=ports, env=env, echo=logs, gateway_workers=args.gateway_workers)  # type: ignore[arg-type]
    samples: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    try:
        print(f"soak: starting the stack in {data} ...", flush=True)
        stack.start()
        users = sign_up_users(stack.public_url, args.users)
        spec = {
            "url": stack.public_url,
            "rate": args.rate,
            "duration": args.duration,
            "threads": args.threads,
            "renew_every": args.renew_every,
            "users": users,
        }
        print(
            f"soak: {args.duration:g} s at {args.rate:g} req/s, {args.users} users, gateway workers "
            f"{args.gateway_workers}, sampling every {args.sample_every:g} s (warm-up {warmup:g} s)",
            flush=True,
        )
        started = time.monotonic()
        loader = subprocess.Popen(
            [sys.executable, "-m", "bench.soak", "load"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert loader.stdin is not None and loader.stdout is not None
        loader.stdin.write(json.dumps(spec))
        loader.stdin.close()
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.append(loader.stdout.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        while loader.poll() is None:
            samples.extend(sample(stack))
            if time.monotonic() - started > args.duration + 120:
                loader.kill()
                raise RuntimeError("the load generator did not finish in time")
            _wait(loader, args.sample_every)
        samples.extend(sample(stack))
        reader.join(10)
        if loader.returncode != 0 or not output or not output[0].strip():
            raise RuntimeError(f"the load generator failed with exit status {loader.returncode}")
        load = json.loads(output[0])
        time.sleep(1.0)  # the last access-log lines
        processes = analyse(samples, started, warmup)
        result = {
            "command": "python -m bench.soak " + " ".join(argv if argv is not None else sys.argv[1:]),
            "duration_s": args.duration,
            "rate": args.rate,
            "users": args.users,
            "gateway_workers": args.gateway_workers,
            "database": "postgresql" if args.database_url else "sqlite",
            "warmup_s": warmup,
            "load": load,
            "log_lines": dict(logs.lines),
            "log_errors": logs.error_count,
            "log_error_examples": logs.errors,
            "processes": processes,
        }
        result["passed"] = (
            load["unexpected"] == 0
            and logs.error_count == 0
            and bool(processes)
            and all(p["rss_flat"] and p["fds_flat"] for p in processes)
        )
    finally:
        stack.stop()
        if args.keep_data or not result.get("passed"):
            print(f"soak: data and databases kept in {data}", flush=True)
        else:
            shutil.rmtree(data, ignore_errors=True)
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["passed"] else 1


def _wait(process: subprocess.Popen[str], seconds: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(seconds)


def render(result: dict[str, Any]) -> str:
    load = result["load"]
    lines = [
        "",
        f"soak: {load['requests']} requests in {load['seconds']} s ({load['achieved_rate']} req/s, "
        f"max lateness {load['max_lateness_s']} s), {load['jwt_renewals']} JWT renewals",
        "",
        "| kind | requests | statuses | p50 ms | p99 ms | max ms |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for kind, figures in load["kinds"].items():
        statuses = ", ".join(f"{status}: {count}" for status, count in sorted(figures["statuses"].items()))
        lines.append(
            f"| {kind} | {figures['requests']} | {statuses} | {figures['p50_ms']} | {figures['p99_ms']} | "
            f"{figures['max_ms']} |"
        )
    lines += [
        "",
        "| process | pid | RSS MiB: start | after warm-up | end | peak | trend KiB/min | fds: warm / end / peak |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for p in result["processes"]:
        mib = [
            f"{p[key] / 1024:.1f}" for key in ("rss_start_kib", "rss_after_warmup_kib", "rss_end_kib", "rss_peak_kib")
        ]
        fds = f"{p['fds_after_warmup']} / {p['fds_end']} / {p['fds_peak']}"
        lines.append(f"| {p['service']} | {p['pid']} | {' | '.join(mib)} | {p['rss_slope_kib_per_min']} | {fds} |")
    lines += [
        "",
        f"unexpected statuses: {load['unexpected']}; log lines: {result['log_lines']}; "
        f"log errors: {result['log_errors']}",
    ]
    lines += [f"  unexpected: {example}" for example in load["unexpected_examples"][:10]]
    lines += [f"  log error: {line}" for line in result["log_error_examples"][:10]]
    lines.append(f"verdict: {'PASS' if result['passed'] else 'FAIL'}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
