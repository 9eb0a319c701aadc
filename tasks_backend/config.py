"""Configuration of the tasks backend, parsed once from the environment.

=========================  ====================================  ==========================================
Variable                   Default                               Meaning
=========================  ====================================  ==========================================
``TASKS_DATABASE_URL``     ``sqlite+aiosqlite:///data/tasks.db``  SQLAlchemy async URL. ``postgresql://`` and
                                                                 ``postgres://`` are rewritten to asyncpg; a
                                                                 relative SQLite path is relative to the
                                                                 working directory (its folder is created).
``EDGE_PROOF_SECRET``      (required)                            Secret(s) shared with the gateway, comma-
                                                                 separated, each >= 32 bytes; the first signs,
                                                                 all verify (see ``gateway/proof.py``).
``TASKS_PROOF_MAX_AGE``    ``30``                                Seconds a gateway proof stays valid (1-300).
``TASKS_MAX_BODY_BYTES``   ``65536``                             Largest request body accepted; larger -> 413
                                                                 (1-16777216).
``TASKS_MAX_PAGE_SIZE``    ``100``                               Largest ``limit`` a list request may ask for
                                                                 (1-1000); the default page is 50 or this,
                                                                 whichever is smaller.
=========================  ====================================  ==========================================

Every problem is reported at once in one :class:`ConfigError`, so an operator fixes them in one go.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway import proof
from tasks_backend.db import normalize_database_url

DATABASE_URL_ENV = "TASKS_DATABASE_URL"
PROOF_MAX_AGE_ENV = "TASKS_PROOF_MAX_AGE"
MAX_BODY_BYTES_ENV = "TASKS_MAX_BODY_BYTES"
MAX_PAGE_SIZE_ENV = "TASKS_MAX_PAGE_SIZE"
#: Every variable this service reads, for ``--help``.
ENVIRONMENT = (DATABASE_URL_ENV, proof.PROOF_SECRET_ENV, PROOF_MAX_AGE_ENV, MAX_BODY_BYTES_ENV, MAX_PAGE_SIZE_ENV)

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///data/tasks.db"
DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50


class ConfigError(ValueError):
    """One or more configuration problems; ``problems`` lists each, one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Config:
    database_url: str
    proof_secrets: tuple[bytes, ...] = field(repr=False)
    proof_max_age: int = proof.DEFAULT_MAX_AGE
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_page_size: int = DEFAULT_MAX_PAGE_SIZE

    @property
    def default_page_size(self) -> int:
        return min(DEFAULT_PAGE_SIZE, self.max_page_size)


def _integer(environ: Mapping[str, str], name: str, default: int, low: int, high: int, problems: list[str]) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        problems.append(f"{name}={raw!r} must be an integer from {low} to {high}")
        return default
    return int(raw)


def database_url(environ: Mapping[str, str]) -> str:
    """``TASKS_DATABASE_URL`` alone (all ``migrate`` needs), normalized; raises ConfigError."""
    try:
        return normalize_database_url(environ.get(DATABASE_URL_ENV, "").strip() or DEFAULT_DATABASE_URL)
    except ValueError as exc:
        raise ConfigError([f"{DATABASE_URL_ENV}: {exc}"]) from exc


def load_config(environ: Mapping[str, str]) -> Config:
    """Build the configuration from ``environ`` (``os.environ`` in production, a dict in tests)."""
    problems: list[str] = []
    url = ""
    try:
        url = database_url(environ)
    except ConfigError as exc:
        problems.extend(exc.problems)
    secrets: tuple[bytes, ...] = ()
    try:
        secrets = proof.parse_secrets(environ.get(proof.PROOF_SECRET_ENV))
    except ValueError as exc:
        problems.append(str(exc))
    max_age = _integer(environ, PROOF_MAX_AGE_ENV, proof.DEFAULT_MAX_AGE, 1, 300, problems)
    max_body = _integer(environ, MAX_BODY_BYTES_ENV, DEFAULT_MAX_BODY_BYTES, 1, 16 * 1024 * 1024, problems)
    max_page = _integer(environ, MAX_PAGE_SIZE_ENV, DEFAULT_MAX_PAGE_SIZE, 1, 1000, problems)
    if problems:
        raise ConfigError(problems)
    return Config(
        database_url=url,
        proof_secrets=secrets,
        proof_max_age=max_age,
        max_body_bytes=max_body,
        max_page_size=max_page,
    )
