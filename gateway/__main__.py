"""``python -m gateway``: validate the configuration, then run the gateway under uvicorn.

Exit status 2 when the configuration is missing or invalid (every problem is printed), so the gateway never runs
open. ``--workers N`` > 1 runs N uvicorn worker processes (on Linux each with a SO_REUSEPORT listener of its own,
gateway/supervisor.py); each loads the configuration again from ``GATEWAY_CONFIG`` (set here to the file that was
validated), and ``PROMETHEUS_MULTIPROC_DIR`` is pointed at a fresh temporary directory (removed at exit) unless
already set, so metrics are summed over workers. Exit status 3 when the workers cannot start (the port is taken,
or workers fail at start).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import ctypes
import ctypes.util
import functools
import gc
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any, cast

from gateway import express, supervisor
from gateway.coalescing import CoalescingTransport

CONFIG_ENV = "GATEWAY_CONFIG"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
HEADER_TIMEOUT_ENV = "GATEWAY_HEADER_TIMEOUT"
MAX_HEADER_BYTES_ENV = "GATEWAY_MAX_HEADER_BYTES"
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_MAX_HEADER_BYTES = 65536
EXIT_CONFIG = 2

_EPILOG = f"""\
environment variables:
  {CONFIG_ENV}
      the configuration file, when --config is not given
  EDGE_PROOF_SECRET
      the gateway -> backend proof secret(s): comma-separated, each at least 32 bytes; required (the first
      signs, all verify); [proof].secret_env in the configuration names another variable
  IDENTITY_REVOCATION_FEED_TOKEN (or the variable an issuer's revocation_token_env names)
      the token the issuer's revocation feed requires, sent as "Authorization: Bearer" on every poll;
      required once revocation_token_env names it (deploy/gateway*.toml do)
  {MULTIPROC_ENV}
      directory for per-worker metric files; with --workers > 1 and this unset, a fresh temporary directory
      is used and removed at exit (set by hand, it must start empty)
  {HEADER_TIMEOUT_ENV}, {MAX_HEADER_BYTES_ENV}
      the request-head limits (defaults {DEFAULT_HEADER_TIMEOUT:g} s and {DEFAULT_MAX_HEADER_BYTES} bytes);
      --header-timeout and --max-header-bytes set them

Configuration errors are all printed at once and exit with status 2.
Every configuration key is documented in the README ("Gateway configuration").
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="The edge gateway: a verifying reverse proxy that fails closed.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=("serve", "check"),
        default="serve",
        help="serve (default): run the gateway; check: validate the configuration and exit",
    )
    parser.add_argument("--config", metavar="FILE", help=f"TOML configuration file (default: ${CONFIG_ENV})")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="worker processes (default 1); on Linux each listens on its own SO_REUSEPORT socket and is "
        "restarted if it exits; metrics are summed over them",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, stop accepting and wait this long for in-flight requests to finish (default 30)",
    )
    parser.add_argument(
        "--header-timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help="close a connection that has not sent a whole request head this long after connecting or after its "
        f"first byte (slowloris; default {DEFAULT_HEADER_TIMEOUT:g})",
    )
    parser.add_argument(
        "--max-header-bytes",
        type=_positive,
        metavar="BYTES",
        help=f"answer 431 to a request line plus headers larger than this (default {DEFAULT_MAX_HEADER_BYTES})",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"), help="default info"
    )
    parser.add_argument(
        "--no-access-log", action="store_true", help="do not write the JSON access-log line per request"
    )
    return parser


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _positive_seconds(value: str) -> float:
    number = float(value)
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return number


def log_config(level: str, *, access_log: bool = True) -> dict[str, Any]:
    """uvicorn's logging setup plus the gateway's loggers: errors as uvicorn prints them, the access log as bare
    JSON lines on stderr (uvicorn's own access log is off: ours has the route, user and auth outcome)."""
    import uvicorn.config

    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["json_line"] = {"format": "%(message)s"}
    # Buffered: flushed every second by the app, not after every line (gateway/accesslog.py).
    config["handlers"]["gateway_access"] = {"()": "gateway.accesslog.LineHandler", "formatter": "json_line"}
    config["loggers"]["gateway"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    config["loggers"]["gateway.access"] = {
        "handlers": ["gateway_access"],
        "level": "INFO" if access_log else "WARNING",
        "propagate": False,
    }
    config.setdefault("filters", {})["gateway_aborted"] = {"()": "gateway.__main__.AbortedResponseFilter"}
    config["loggers"]["uvicorn.error"]["filters"] = ["gateway_aborted"]
    return config


class AbortedResponseFilter(logging.Filter):
    """uvicorn logs any exception an app raises as "Exception in ASGI application", at ERROR, with a traceback.
    The gateway raises a GatewayError on purpose when an upstream fails after the response head was sent: it is
    the only way to make the server abort the client connection (gateway/app.py). That is an upstream failure,
    already in the access log, not a gateway bug: one WARNING line instead (issue 8: no error in the logs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from gateway.errors import GatewayError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, GatewayError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "response aborted after its head was sent: %s", (exc.message,)
            record.exc_info, record.exc_text = None, None
        return True


def server_options() -> dict[str, Any]:
    """The uvicorn settings every gateway listener runs with (the CLI, and the loopback tests)."""
    return {
        "http": HTTP_PROTOCOL,
        "proxy_headers": False,  # the gateway decides whose X-Forwarded-* to believe (trusted_proxies)
        "server_header": False,
        "date_header": True,
        "access_log": False,  # ours has the route, user and auth outcome (gateway/accesslog.py)
        "lifespan": "on",
    }


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - uvicorn[standard] installs httptools; h11 keeps the whole target
    HTTP_PROTOCOL = "h11"
else:
    HTTP_PROTOCOL = "gateway.__main__:OriginFormHttpToolsProtocol"

    class OriginFormHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with four changes an edge server needs.

        * An absolute-form target (``GET http://host/path``) keeps its whole target in ``raw_path``. uvicorn passes
          only the path on, so the gateway could not refuse what issue 4 says to refuse (routing.canonical_path
          rejects a ``raw_path`` that does not start with ``/``); with h11 the whole target arrives anyway. The
          scope is patched before the request's task first runs.
        * The request head is bounded (issue 8): llhttp has no limit of its own and uvicorn none for httptools, so
          a client could stream headers without end into memory (and on to the upstream). A head past
          ``max_header_bytes`` is answered 431 (RFC 6585 §5) and the connection closed. Only the bytes fed to the
          parser while a head is incomplete count; a body never does.
        * A head must arrive within ``header_timeout`` of the connection opening or of its first byte (slowloris:
          uvicorn's keep-alive timer runs only between requests, so a client that connects and sends nothing, or
          a byte now and then, was never closed). Like nginx's ``client_header_timeout``.
        * The writes of one loop iteration leave in one ``send`` (gateway/coalescing.py): a proxied response's head
          and body cost one system call instead of two (~10% of the gateway's CPU per request, issue 7).
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # The fast lane (gateway/express.py) needs the gateway itself, not a wrapper around it. Imported here, not
            # at the top: gateway.app imports prometheus_client, which must see PROMETHEUS_MULTIPROC_DIR that main()
            # sets first.
            from gateway.app import Gateway

            app = self.app
            self._gateway = app if isinstance(app, Gateway) and app.fast_lane and not self.limit_concurrency else None
            self.lane: Any = None  # the request on the fast lane, if one is (gateway/express.py)
            self._head_timeout, self._head_limit = head_limits()
            self._head_timer: asyncio.TimerHandle | None = None
            self._idle_timer: asyncio.TimerHandle | None = None
            self._idle_deadline: float | None = None
            self._head_deadline: float | None = None
            self._head_bytes = 0
            self._in_head = True  # no complete head yet for the next request on this connection

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # A response's head and body leave in one send (gateway/coalescing.py).
            super().connection_made(CoalescingTransport(cast(asyncio.Transport, transport), self.loop))
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._gateway is not None:
                express.client_lost(self)
            self._head_deadline = None
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            self._idle_deadline = None
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._in_head and self._head_deadline is None:
                # The first bytes after a response start the head timeout even if they begin no request: a bare CRLF
                # (which llhttp skips) cancels the keep-alive timeout and would leave neither armed (slowloris).
                self._arm_head_timer()
            if not self._in_head:
                super().data_received(data)
                return
            room = self._head_limit - self._head_bytes
            if len(data) <= room:
                self._head_bytes += len(data)
                super().data_received(data)
                return
            # Parse only what the head may still take: if that does not complete it, the head is too large.
            self._head_bytes = self._head_limit
            if room > 0:
                super().data_received(data[:room])
            if self.transport.is_closing():
                return
            if self._in_head:
                self._refuse_large_head()
            else:  # the head ended within the allowance: the rest is body or the next request
                protocol = self.transport.get_protocol()
                assert isinstance(protocol, asyncio.Protocol)
                protocol.data_received(data[room:])

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_head_timer()

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._disarm_head_timer()
            if self._gateway is not None and express.admit(self, self._gateway):
                return
            super().on_headers_complete()
            if not self.url.startswith(b"/") and "raw_path" in self.scope:
                self.scope["raw_path"] = self.url.partition(b"?")[0]

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._head_bytes = True, 0

        def _unset_keepalive_if_required(self) -> None:
            self._idle_deadline = None  # the timer, when it fires, finds nothing to judge (see on_response_complete)

        def on_response_complete(self) -> None:
            # uvicorn's, but the keep-alive timeout is one timer per connection that a response moves, as the head
            # timeout is: uvicorn creates a timer after every response and cancels it at the next request's first
            # bytes, ~1.5 µs of each request (issue 7).
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self._idle_deadline = None
            self.flow.resume_reading()
            if self.pipeline:
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
                return
            self._idle_deadline = self.loop.time() + self.timeout_keep_alive
            if self._idle_timer is None:
                self._idle_timer = self.loop.call_at(self._idle_deadline, self._idle_timed_out)

        def _idle_timed_out(self) -> None:
            self._idle_timer = None
            deadline = self._idle_deadline
            if deadline is None or self.transport.is_closing():
                return
            if self.loop.time() < deadline - 0.001:  # a later response moved it (uvloop may fire up to 1 ms early)
                self._idle_timer = self.loop.call_at(deadline, self._idle_timed_out)
                return
            self.timeout_keep_alive_handler()

        def _arm_head_timer(self) -> None:
            # One timer per connection, not one per request (create + cancel cost ~1.5 µs each, issue 7): arming
            # moves the deadline, and the timer, when it fires, judges the head or re-arms for a later deadline.
            self._head_deadline = self.loop.time() + self._head_timeout
            if self._head_timer is None:
                self._head_timer = self.loop.call_at(self._head_deadline, self._head_timed_out)

        def _disarm_head_timer(self) -> None:
            self._head_deadline = None  # a pending timer finds nothing to judge and ends

        def _head_timed_out(self) -> None:
            self._head_timer = None
            deadline = self._head_deadline
            if deadline is None or not self._in_head or self.transport.is_closing():
                return
            if self.loop.time() < deadline - 0.001:  # armed again since (uvloop may fire up to 1 ms early)
                self._head_timer = self.loop.call_at(deadline, self._head_timed_out)
                return
            if self.cycle is not None and not self.cycle.response_complete:
                self._arm_head_timer()  # a pipelined head behind a response in progress: judge it later
                return
            self.transport.close()

        def _refuse_large_head(self) -> None:
            body = json.dumps(
                {
                    "error": "request_header_fields_too_large",
                    "message": f"the request line and headers exceed {self._head_limit} bytes",
                    "request_id": secrets.token_hex(16),
                }
            ).encode()
            head = (
                "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            self.transport.write(head.encode() + body)
            self.transport.close()


@functools.cache
def head_limits() -> tuple[float, int]:
    """(header timeout, max header bytes) for this process: from the environment, where ``main`` puts the flags
    so that ``--workers`` processes see them too; read once, at the first connection."""
    timeout = float(os.environ.get(HEADER_TIMEOUT_ENV) or DEFAULT_HEADER_TIMEOUT)
    limit = int(os.environ.get(MAX_HEADER_BYTES_ENV) or DEFAULT_MAX_HEADER_BYTES)
    return timeout, limit


#: glibc's mallopt parameter number for the mmap threshold (malloc.h).
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def pin_mmap_threshold(environ: Mapping[str, str]) -> bool:
    """glibc only: allocations of 128 KiB and more always get their own mmap, returned to the system when freed.
    glibc otherwise raises that threshold each time such a block is freed, after which the token cache's large
    tables (reallocated as it turns over) land on the main heap, which does not shrink: RSS rose in steps (+4,
    +10 MiB) long after the cache was full (``python -m bench.memory``, issue 7). Pinning the threshold is what
    ``MALLOC_MMAP_THRESHOLD_`` does; an operator's own setting of it wins. Returns whether it was pinned here."""
    if "MALLOC_MMAP_THRESHOLD_" in environ or sys.platform != "linux":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        return False
    if mallopt is None:  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def tune_gc() -> None:
    """Called once the app is built. Everything allocated so far (modules, configuration, the app) lives as long as
    the process, so it is moved out of the collector's sight (``gc.freeze``); and the young generation is collected
    every 10,000 net container allocations instead of 700: the request path allocates many short-lived containers
    that reference counting frees anyway, and each collection rescans whatever is young. ~10% less CPU per proxied
    request, measured (issue 7)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def worker_app() -> Any:
    """The app factory each worker process calls (``--workers`` > 1): configuration from ``GATEWAY_CONFIG``."""
    from gateway.app import create_app
    from gateway.config import load_config
    from gateway.metrics import Metrics

    app = create_app(load_config(os.environ[CONFIG_ENV], os.environ), metrics=Metrics.from_environ(os.environ))
    tune_gc()
    pin_mmap_threshold(os.environ)
    return app


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    path = args.config or environ.get(CONFIG_ENV)
    if not path:
        print(f"gateway: no configuration: pass --config FILE or set {CONFIG_ENV}", file=sys.stderr)
        return EXIT_CONFIG

    from gateway.config import ConfigError, load_config

    try:
        config = load_config(path, environ)
    except ConfigError as exc:
        print(f"gateway: invalid configuration ({path}):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        print(f"gateway: configuration {path} is valid ({len(config.routes)} routes, {len(config.issuers)} issuers)")
        return 0

    import uvicorn

    # The request-head limits reach every worker through the environment (head_limits()).
    if args.header_timeout is not None:
        os.environ[HEADER_TIMEOUT_ENV] = str(args.header_timeout)
    if args.max_header_bytes is not None:
        os.environ[MAX_HEADER_BYTES_ENV] = str(args.max_header_bytes)
    options: dict[str, Any] = {
        **server_options(),
        "host": args.host,
        "port": args.port,
        "log_config": log_config(args.log_level, access_log=not args.no_access_log),
        "log_level": args.log_level,
        "timeout_graceful_shutdown": args.graceful_timeout,
    }
    if args.workers == 1:
        from gateway.app import create_app
        from gateway.metrics import Metrics

        app = create_app(config, metrics=Metrics.from_environ(environ))
        tune_gc()
        pin_mmap_threshold(environ)
        uvicorn.run(app, **options)
        return 0

    # Worker processes inherit the process environment: that is where they find the configuration.
    os.environ.update({name: value for name, value in environ.items() if name not in os.environ})
    os.environ[CONFIG_ENV] = os.path.abspath(path)
    created = None
    if not environ.get(MULTIPROC_ENV):
        created = tempfile.mkdtemp(prefix="gateway-metrics-")
        os.environ[MULTIPROC_ENV] = created
    try:
        if not supervisor.available():  # no SO_REUSEPORT: uvicorn's supervisor, one socket shared by every worker
            uvicorn.run("gateway.__main__:worker_app", factory=True, workers=args.workers, **options)
            return 0
        server_config = uvicorn.Config("gateway.__main__:worker_app", factory=True, **options)
        metrics_dir = os.environ[MULTIPROC_ENV]

        def forget_worker(pid: int) -> None:
            # A worker killed outright never ran its shutdown (Metrics.close): its live gauges, the key and
            # revocation-list timestamps, would stay in the aggregate and age into false "stale keys" alarms.
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]

        return supervisor.Supervisor(server_config, args.workers, on_exit=forget_worker).run()
    finally:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
