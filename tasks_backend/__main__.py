"""``python -m tasks_backend [serve|migrate]``: run the tasks API, or bring its schema up to date."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from tasks_backend import config as config_module

_ENVIRONMENT_HELP = """\
environment (parsed once at start; every problem is reported at once):
  TASKS_DATABASE_URL    database, default sqlite+aiosqlite:///data/tasks.db (postgresql://... uses asyncpg)
  EDGE_PROOF_SECRET     required by serve: the secret(s) shared with the gateway, comma-separated, >= 32 bytes
  TASKS_PROOF_MAX_AGE   seconds a gateway proof stays valid, default 30
  TASKS_MAX_BODY_BYTES  largest request body, default 65536 (larger -> 413)
  TASKS_MAX_PAGE_SIZE   largest ?limit= on the list endpoint, default 100
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tasks_backend",
        description=(
            "The tasks backend: a per-user tasks API that trusts identity only through the gateway proof.\n\n"
            "With no command it serves: `python -m tasks_backend --host H --port P` is `serve --host H --port P`\n"
            "(see `serve --help`). Run `migrate` first: serving does not change the schema, and /readyz is 503\n"
            "until the database is at the newest migration."
        ),
        epilog=_ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="{serve,migrate}")
    serve = commands.add_parser(
        "serve",
        help="serve the API with uvicorn (the default when no command is given)",
        epilog=_ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8002, help="port to bind (default: %(default)s)")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level (default: %(default)s)",
    )
    commands.add_parser(
        "migrate",
        help="create or upgrade the schema at TASKS_DATABASE_URL to the newest migration, then exit",
        epilog=_ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in ("serve", "migrate", "-h", "--help"):
        args_list.insert(0, "serve")  # `python -m tasks_backend --host H --port P` serves
    args = _parser().parse_args(args_list)
    try:
        if args.command == "migrate":
            from tasks_backend.db import migrate

            migrate(config_module.database_url(os.environ))
            return 0
        config = config_module.load_config(os.environ)
    except config_module.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2

    import uvicorn

    from tasks_backend.app import create_app

    # One JSON line per request from tasks_backend.accesslog replaces uvicorn's access log.
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    logging.getLogger("tasks_backend.access").setLevel(args.log_level.upper())
    uvicorn.run(
        create_app(config),
        access_log=False,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        # The gateway decides whose X-Forwarded-* to believe; this service believes none (STYLE.md).
        proxy_headers=False,
        server_header=False,
        date_header=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
