"""The fleet on one machine (issue 9): HAProxy in front of two gateway replicas, two identity replicas behind
HAProxy's internal listener, and the tasks backend, all on PostgreSQL. `make fleet` runs this.

    python -m scripts.fleet [--data DIR] [--database-url URL | --private-postgres] [--port 8000] [--free-ports]

Every process listens on 127.0.0.1; HAProxy connects to the replicas from 127.0.0.2 (``EDGE_LB_SOURCE``), the
one address the gateways trust as a proxy::

    client ─► HAProxy :8000 ─┬─► gateway-1 :8010 ─┬─► HAProxy :8001 ─┬─► identity-1 :8021 ─┐
              (edge)         └─► gateway-2 :8011 ─┤   (identity)     └─► identity-2 :8022 ─┼─► PostgreSQL
                                                  └─► tasks :8002 ──────────────────────────┘

HAProxy runs deploy/haproxy.cfg with loopback addresses in its environment; the gateways run
deploy/gateway.production.toml with the four production addresses replaced (:data:`PRODUCTION_ADDRESSES`), so
what operators copy is what runs here. By default both services use the database ``edge_fleet`` of the local
PostgreSQL (created when missing); ``--private-postgres`` starts a cluster of its own under DATA instead (the
fleet test does this, so it can restart PostgreSQL without touching the machine's). Secrets are generated once
into DATA/secrets.env. HAProxy is installed from Debian when missing. Ctrl-C (or SIGTERM) stops everything:
HAProxy first, then the gateways, identity and tasks, then a private PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

from scripts import devstack
from scripts.devstack import ROOT, Service, Stack, ensure_secrets, free_port

HAPROXY_CONFIG = ROOT / "deploy" / "haproxy.cfg"
GATEWAY_CONFIG = ROOT / "deploy" / "gateway.production.toml"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/edge_fleet"
#: The address HAProxy connects from (``source`` in deploy/haproxy.cfg): the gateways trust exactly this one, and
#: because it differs from the 127.0.0.1 every other local client uses, the trust is observable on loopback.
LB_SOURCE = "127.0.0.2"
GATEWAYS = ("gateway-1", "gateway-2")
IDENTITIES = ("identity-1", "identity-2")
# devstack's log prefixes have a colour per service name.
for _name, _color in {
    "postgres": "\033[34m",
    "haproxy": "\033[32m",
    "identity-1": "\033[36m",
    "identity-2": "\033[96m",
    "gateway-1": "\033[33m",
    "gateway-2": "\033[93m",
}.items():
    devstack.COLORS.setdefault(_name, _color)


@dataclass(frozen=True)
class FleetPorts:
    public: int = 8000  # HAProxy, the product's URL
    identity_lb: int = 8001  # HAProxy's internal listener for identity
    tasks: int = 8002
    gateways: tuple[int, int] = (8010, 8011)
    identities: tuple[int, int] = (8021, 8022)

    @classmethod
    def free(cls, public: int | None = None) -> FleetPorts:
        return cls(
            public=public or free_port(),
            identity_lb=free_port(),
            tasks=free_port(),
            gateways=(free_port(), free_port()),
            identities=(free_port(), free_port()),
        )


def _production_addresses(ports: FleetPorts) -> dict[str, str]:
    """deploy/gateway.production.toml's addressing plan (deploy/README.md) -> this machine's loopback ports."""
    return {
        "https://edge.example.com": f"http://127.0.0.1:{ports.public}",
        "http://lb.edge.internal:8001": f"http://127.0.0.1:{ports.identity_lb}",
        "http://tasks.edge.internal:8002": f"http://127.0.0.1:{ports.tasks}",
        '"10.0.0.10/32"': f'"{LB_SOURCE}/32"',
    }


PRODUCTION_ADDRESSES = tuple(_production_addresses(FleetPorts()))


def render_gateway_config(ports: FleetPorts, overrides: Mapping[str, float] | None = None) -> str:
    """deploy/gateway.production.toml on loopback. Each production address must be in the file (a renamed one
    would otherwise leave the fleet pointing nowhere). ``overrides`` replaces the values of numeric keys that
    occur once, e.g. a short ``jwks_ttl`` and ``jwks_refetch_cooldown`` for the fleet test's key rotation."""
    text = GATEWAY_CONFIG.read_text()
    for production, local in _production_addresses(ports).items():
        if production not in text:
            raise RuntimeError(f"{GATEWAY_CONFIG}: {production} not found; update scripts/fleet.py")
        text = text.replace(production, local)
    for key, value in (overrides or {}).items():
        text, count = re.subn(rf"(?m)^{re.escape(key)} = .*$", f"{key} = {float(value)!r}", text)
        if count != 1:
            raise RuntimeError(f"{GATEWAY_CONFIG}: expected one {key} line, found {count}")
    return text


def haproxy_environment(ports: FleetPorts, stats_socket: Path) -> dict[str, str]:
    """The variables deploy/haproxy.cfg reads (deploy/env/haproxy.env has the production values)."""
    return {
        "EDGE_LB_BIND": f"127.0.0.1:{ports.public}",
        "EDGE_LB_IDENTITY_BIND": f"127.0.0.1:{ports.identity_lb}",
        "EDGE_LB_SOURCE": LB_SOURCE,
        "EDGE_LB_STATS_SOCKET": str(stats_socket),
        "EDGE_GATEWAY_1": f"127.0.0.1:{ports.gateways[0]}",
        "EDGE_GATEWAY_2": f"127.0.0.1:{ports.gateways[1]}",
        "EDGE_IDENTITY_1": f"127.0.0.1:{ports.identities[0]}",
        "EDGE_IDENTITY_2": f"127.0.0.1:{ports.identities[1]}",
    }


def ensure_haproxy(echo: IO[str] | None = sys.stdout) -> str:
    """The haproxy binary, installed from Debian (``apt-get install -y haproxy``) when missing."""
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if found:
        return found
    if echo is not None:
        print("haproxy is not installed: apt-get install -y haproxy", file=echo, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "haproxy"]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        # A fresh container has no package lists yet.
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    found = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(found).exists():
        raise RuntimeError("apt-get installed haproxy but no haproxy binary was found")
    return found


# --- PostgreSQL ------------------------------------------------------------------------------------------------


def _asyncpg_dsn(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(scheme="postgresql"))


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


async def _can_connect(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_asyncpg_dsn(url), timeout=2)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


def wait_for_postgres(url: str, timeout: float = 30.0) -> float:
    """Block until PostgreSQL accepts a query on ``url``; return the seconds it took."""
    started = time.monotonic()
    while True:
        try:
            asyncio.run(_can_connect(url))
            return time.monotonic() - started
        except Exception as exc:  # refused, "starting up", a timeout: asyncpg raises many kinds while it starts
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"PostgreSQL at {url} not reachable after {timeout}s: {exc}") from exc
        time.sleep(0.05)


async def _create_database(url: str) -> bool:
    import asyncpg

    name = urlsplit(url).path.lstrip("/")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
        raise RuntimeError(f"refusing to create a database named {name!r}")
    conn = await asyncpg.connect(_asyncpg_dsn(_with_database(url, "postgres")), timeout=10)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        await conn.execute(f'CREATE DATABASE "{name}"')
        return True
    finally:
        await conn.close()


def ensure_database(url: str) -> bool:
    """Create the database ``url`` names when it does not exist (True when created)."""
    return asyncio.run(_create_database(url))


class PrivatePostgres:
    """A PostgreSQL cluster of its own in ``directory``, listening on 127.0.0.1:``port`` and a socket in that
    directory, so it can be stopped and restarted without touching the machine's shared server. It runs as the
    ``postgres`` user (initdb and postgres refuse root), switched with ``setpriv``, which execs rather than forks:
    the process the fleet signals is the postmaster itself (SIGINT: fast shutdown)."""

    def __init__(self, directory: Path, port: int, *, user: str = "postgres") -> None:
        self.directory = directory
        self.port = port
        self.user = user
        self.bin = self.find_bin()

    @staticmethod
    def find_bin() -> Path:
        """The newest installed server's bin directory (Debian: /usr/lib/postgresql/<major>/bin)."""
        candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()]
        if not candidates:
            raise RuntimeError("no PostgreSQL server found under /usr/lib/postgresql (apt-get install postgresql)")
        return max(candidates, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_user(self, argv: Sequence[str]) -> list[str]:
        if os.geteuid() != 0:
            return list(argv)
        return ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups", "--", *argv]

    def init(self) -> None:
        """initdb once (trust authentication on loopback only: it listens nowhere else)."""
        if (self.directory / "PG_VERSION").exists():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, self.user, self.user)
        self.directory.chmod(0o700)
        argv = [str(self.bin / "initdb"), "-D", str(self.directory), "-U", "postgres", "-A", "trust"]
        argv += ["-E", "UTF8", "--no-locale", "--no-sync"]
        result = subprocess.run(self._as_user(argv), capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout}{result.stderr}")

    def argv(self) -> list[str]:
        server = [str(self.bin / "postgres"), "-D", str(self.directory), "-p", str(self.port)]
        server += ["-k", str(self.directory), "-c", "listen_addresses=127.0.0.1"]
        return self._as_user(server)


# --- HAProxy's runtime API -----------------------------------------------------------------------------------


def lb_stats(stats_socket: Path, timeout: float = 2.0) -> list[dict[str, str]]:
    """``show stat`` on HAProxy's stats socket: one row per frontend, backend and server (``pxname``,
    ``svname``, ``status`` UP/DOWN/MAINT/DRAIN, ``stot`` sessions so far, ...)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(stats_socket))
        sock.sendall(b"show stat\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    text = b"".join(chunks).decode().lstrip("# ")
    return list(csv.DictReader(io.StringIO(text)))


def lb_servers(stats_socket: Path) -> dict[str, dict[str, str]]:
    """Server rows by server name (names are unique across deploy/haproxy.cfg's backends)."""
    return {row["svname"]: row for row in lb_stats(stats_socket) if row.get("svname") not in ("FRONTEND", "BACKEND")}


# --- the fleet -----------------------------------------------------------------------------------------------


class Fleet(Stack):
    """HAProxy, two gateways, two identity replicas, tasks and optionally a private PostgreSQL, as subprocesses.

    It is a :class:`scripts.devstack.Stack` with a service set of its own: starting, log capture, readiness and
    stopping (SIGTERM, then SIGKILL of the process group) are devstack's. Use as a context manager, or
    start()/stop()."""

    def __init__(
        self,
        data_dir: Path,
        *,
        database_url: str = DEFAULT_DATABASE_URL,
        ports: FleetPorts | None = None,
        postgres: PrivatePostgres | None = None,
        env: Mapping[str, str] | None = None,
        echo: IO[str] | None = None,
        gateway_workers: int = 1,
        gateway_overrides: Mapping[str, float] | None = None,
        haproxy: str = "haproxy",
    ) -> None:
        # Stack.__init__ builds devstack's three services; the attributes its methods use are set here instead.
        self.data_dir = data_dir
        self.echo = echo
        self.fleet_ports = ports or FleetPorts()
        self.database_url = database_url
        self.postgres = postgres
        self.public_url = f"http://127.0.0.1:{self.fleet_ports.public}"
        self.stats_socket = data_dir / "haproxy.sock"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **dict(os.environ if env is None else env),
            **ensure_secrets(data_dir),
            **haproxy_environment(self.fleet_ports, self.stats_socket),
            "PYTHONUNBUFFERED": "1",
            "IDENTITY_BASE_URL": self.public_url,
            "IDENTITY_DATABASE_URL": database_url,
            "TASKS_DATABASE_URL": database_url,
            # Identity's peers are HAProxy (LB_SOURCE) and, in the X-Forwarded-For chain, the gateways (127.0.0.1).
            "IDENTITY_TRUSTED_PROXIES": f"127.0.0.1/32,{LB_SOURCE}/32",
        }
        self.gateway_config = data_dir / "gateway.toml"
        self.gateway_config.write_text(render_gateway_config(self.fleet_ports, gateway_overrides))
        py = sys.executable
        host = ["--host", "127.0.0.1"]
        ports_ = self.fleet_ports
        self.services = []
        if postgres is not None:
            self.services.append(Service("postgres", postgres.argv(), postgres.port))
        for name, port in zip(IDENTITIES, ports_.identities, strict=True):
            self.services.append(Service(name, [py, "-m", "identity", "serve", *host, "--port", str(port)], port))
        self.services.append(
            Service("tasks", [py, "-m", "tasks_backend", "serve", *host, "--port", str(ports_.tasks)], ports_.tasks)
        )
        self.services.append(Service("haproxy", [haproxy, "-db", "-f", str(HAPROXY_CONFIG)], ports_.public))
        for name, port in zip(GATEWAYS, ports_.gateways, strict=True):
            argv = [py, "-m", "gateway", "--config", str(self.gateway_config), *host, "--port", str(port)]
            self.services.append(Service(name, [*argv, "--workers", str(gateway_workers)], port))

    # --- start and stop ---------------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        if self.postgres is not None:
            self.postgres.init()
            self.start_service("postgres")
            wait_for_postgres(self.postgres.url, timeout)
        ensure_database(self.database_url)
        self.migrate()
        # Both identity replicas at the same moment on a fresh database: exactly one creates the first key.
        for name in (*IDENTITIES, "tasks"):
            self.start_service(name)
        for name in (*IDENTITIES, "tasks"):
            self.wait_ready(name, timeout)
        # HAProxy before the gateways: they fetch keys and revocations through its internal listener at start-up.
        self.start_service("haproxy")
        self.wait_lb(IDENTITIES, "UP", timeout)
        for name in GATEWAYS:
            self.start_service(name)
        for name in GATEWAYS:
            self.wait_ready(name, timeout)
        self.wait_lb(GATEWAYS, "UP", timeout)

    def stop(self) -> None:
        # The load balancer first (soft stop: it finishes open requests), then what is behind it, the database last.
        self.stop_service("haproxy", signal.SIGUSR1, timeout=10)
        for name in (*GATEWAYS, *IDENTITIES, "tasks"):
            self.stop_service(name)
        if self.postgres is not None:
            self.stop_service("postgres", signal.SIGINT, timeout=30)  # fast shutdown; SIGTERM waits for clients

    def __enter__(self) -> Fleet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    # --- operations -------------------------------------------------------------------------------------------

    def lb_servers(self) -> dict[str, dict[str, str]]:
        return lb_servers(self.stats_socket)

    def wait_lb(self, servers: Sequence[str], status: str, timeout: float = 30.0) -> float:
        """Block until HAProxy's health checks report every one of ``servers`` as ``status``; return the seconds."""
        started = time.monotonic()
        seen: dict[str, str] = {}
        while time.monotonic() - started < timeout:
            with contextlib.suppress(OSError):
                rows = self.lb_servers()
                seen = {name: rows[name]["status"] for name in servers if name in rows}
                if all(seen.get(name) == status for name in servers):
                    return time.monotonic() - started
            haproxy = self.service("haproxy").process
            if haproxy is not None and haproxy.poll() is not None:
                raise RuntimeError("haproxy exited:\n" + "\n".join(self.service("haproxy").output[-30:]))
            time.sleep(0.05)
        raise RuntimeError(f"HAProxy did not report {list(servers)} {status} within {timeout}s: {seen}")

    def identity_command(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """``python -m identity ARGS`` against the fleet's database (rotate-key, revoke-user EMAIL)."""
        return subprocess.run(
            [sys.executable, "-m", "identity", *args],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def describe(self) -> str:
        p = self.fleet_ports
        lines = [
            f"  Ready. Open {self.public_url}/  (HAProxy; sign up at {self.public_url}/signup)",
            "",
            f"  haproxy      {self.public_url} (public)  http://127.0.0.1:{p.identity_lb} (identity, internal)",
            f"               runtime API: echo 'show stat' | socat stdio {self.stats_socket}",
            f"  gateways     http://127.0.0.1:{p.gateways[0]}  http://127.0.0.1:{p.gateways[1]}"
            f"  (trust X-Forwarded-For from {LB_SOURCE} only)",
            f"  identity     http://127.0.0.1:{p.identities[0]}  http://127.0.0.1:{p.identities[1]}",
            f"  tasks        http://127.0.0.1:{p.tasks}",
            f"  database     {self.database_url}",
            "",
            f"  Rotate the signing key:  IDENTITY_DATABASE_URL={self.database_url} IDENTITY_SECRET=... \\",
            "                           .venv/bin/python -m identity rotate-key",
            f"  (secrets in {self.data_dir / 'secrets.env'}; revoke-user EMAIL works the same way)",
            "  Ctrl-C stops everything.",
        ]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make fleet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "fleet", help="default ./data/fleet")
    parser.add_argument(
        "--database-url", default=DEFAULT_DATABASE_URL, help=f"created when missing (default {DEFAULT_DATABASE_URL})"
    )
    parser.add_argument(
        "--private-postgres",
        action="store_true",
        help="run a PostgreSQL cluster of its own under DATA/postgres instead of using --database-url",
    )
    parser.add_argument("--port", type=int, default=8000, help="HAProxy's public port (default 8000)")
    parser.add_argument(
        "--free-ports", action="store_true", help="pick free ports for everything but --port (default 8001-8022)"
    )
    parser.add_argument("--gateway-workers", type=int, default=1, help="worker processes per gateway (default 1)")
    args = parser.parse_args(argv)

    data = args.data.resolve()
    ports = FleetPorts.free(args.port) if args.free_ports else FleetPorts(public=args.port)
    postgres = None
    database_url = args.database_url
    if args.private_postgres:
        postgres = PrivatePostgres(data / "postgres", free_port())
        database_url = _with_database(postgres.url, "edge_fleet")
    try:
        haproxy = ensure_haproxy()
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
        print(f"cannot install haproxy: {exc}", file=sys.stderr)
        return 1
    fleet = Fleet(
        data,
        database_url=database_url,
        ports=ports,
        postgres=postgres,
        echo=sys.stdout,
        gateway_workers=args.gateway_workers,
        haproxy=haproxy,
    )

    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"Starting the fleet on {database_url} ...", flush=True)
        fleet.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"\nstart-up failed: {exc}", file=sys.stderr)
        fleet.stop()
        return 1
    print("\n" + fleet.describe() + "\n", flush=True)
    reported: set[int] = set()
    try:
        while not stopping.wait(0.5):
            # Replicas may come and go (that is the point of a fleet): report an exit, keep the rest running.
            for service in fleet.services:
                process = service.process
                if process is not None and process.poll() is not None and process.pid not in reported:
                    reported.add(process.pid)
                    print(f"{service.name} exited with {process.returncode}", file=sys.stderr, flush=True)
    finally:
        print("\nStopping ...", flush=True)
        fleet.stop()
        print("Stopped.", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
