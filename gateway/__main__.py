"""``python -m gateway``: validate the configuration, then run the gateway under uvicorn.

Exit status 2 when the configuration is missing or invalid (every problem is printed), so the gateway never runs
open. ``--workers N`` > 1 runs N uvicorn worker processes; each loads the configuration again from
``GATEWAY_CONFIG`` (set here to the file that was validated), and ``PROMETHEUS_MULTIPROC_DIR`` is pointed at a
fresh temporary directory (removed at exit) unless already set, so metrics are summed over workers.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

CONFIG_ENV = "GATEWAY_CONFIG"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
EXIT_CONFIG = 2

_EPILOG = f"""\
environment variables:
  {CONFIG_ENV}
      the configuration file, when --config is not given
  EDGE_PROOF_SECRET
      the gateway -> backend proof secret(s): comma-separated, each at least 32 bytes; required (the first
      signs, all verify); [proof].secret_env in the configuration names another variable
  {MULTIPROC_ENV}
      directory for per-worker metric files; with --workers > 1 and this unset, a fresh temporary directory
      is used and removed at exit (set by hand, it must start empty)

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
        "--workers", type=_positive, default=1, help="worker processes (default 1); metrics are summed over them"
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, stop accepting and wait this long for in-flight requests to finish (default 30)",
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


def log_config(level: str, *, access_log: bool = True) -> dict[str, Any]:
    """uvicorn's logging setup plus the gateway's loggers: errors as uvicorn prints them, the access log as bare
    JSON lines on stderr (uvicorn's own access log is off: ours has the route, user and auth outcome)."""
    import uvicorn.config

    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["json_line"] = {"format": "%(message)s"}
    config["handlers"]["gateway_access"] = {
        "class": "logging.StreamHandler",
        "formatter": "json_line",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["gateway"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    config["loggers"]["gateway.access"] = {
        "handlers": ["gateway_access"],
        "level": "INFO" if access_log else "WARNING",
        "propagate": False,
    }
    return config


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
        """uvicorn's httptools protocol, except that an absolute-form target (``GET http://host/path``) keeps its
        whole target in ``raw_path``. uvicorn passes only the path on, so the gateway could not refuse what issue
        4 says to refuse (routing.canonical_path rejects a ``raw_path`` that does not start with ``/``); with h11
        the whole target arrives anyway. The scope is patched before the request's task first runs."""

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            if not self.url.startswith(b"/") and "raw_path" in self.scope:
                self.scope["raw_path"] = self.url.partition(b"?")[0]


def worker_app() -> Any:
    """The app factory each worker process calls (``--workers`` > 1): configuration from ``GATEWAY_CONFIG``."""
    from gateway.app import create_app
    from gateway.config import load_config
    from gateway.metrics import Metrics

    return create_app(load_config(os.environ[CONFIG_ENV], os.environ), metrics=Metrics.from_environ(os.environ))


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

        uvicorn.run(create_app(config, metrics=Metrics.from_environ(environ)), **options)
        return 0

    # Worker processes inherit the process environment: that is where they find the configuration.
    os.environ.update({name: value for name, value in environ.items() if name not in os.environ})
    os.environ[CONFIG_ENV] = os.path.abspath(path)
    created = None
    if not environ.get(MULTIPROC_ENV):
        created = tempfile.mkdtemp(prefix="gateway-metrics-")
        os.environ[MULTIPROC_ENV] = created
    try:
        uvicorn.run("gateway.__main__:worker_app", factory=True, workers=args.workers, **options)
    finally:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
