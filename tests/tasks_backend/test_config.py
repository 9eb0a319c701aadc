"""TASKS_* configuration: defaults, limits, and every problem reported at once."""

from __future__ import annotations

import pytest

from tasks_backend.config import ConfigError, load_config

SECRET = "x" * 32


def test_defaults():
    config = load_config({"EDGE_PROOF_SECRET": SECRET})
    assert config.database_url == "sqlite+aiosqlite:///data/tasks.db"
    assert config.proof_secrets == (SECRET.encode(),)
    assert config.proof_max_age == 30
    assert config.max_body_bytes == 65536
    assert config.max_page_size == 100
    assert config.default_page_size == 50


def test_every_variable_is_read():
    config = load_config(
        {
            "EDGE_PROOF_SECRET": f"{'n' * 40}, {SECRET}",
            "TASKS_DATABASE_URL": "postgres://app@db:5432/tasks",
            "TASKS_PROOF_MAX_AGE": "10",
            "TASKS_MAX_BODY_BYTES": "1024",
            "TASKS_MAX_PAGE_SIZE": "20",
        }
    )
    assert config.proof_secrets == (b"n" * 40, SECRET.encode())
    assert config.database_url == "postgresql+asyncpg://app@db:5432/tasks"
    assert (config.proof_max_age, config.max_body_bytes, config.max_page_size) == (10, 1024, 20)
    assert config.default_page_size == 20


def test_the_secret_never_appears_in_repr():
    assert SECRET not in repr(load_config({"EDGE_PROOF_SECRET": SECRET}))


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        pytest.param({"EDGE_PROOF_SECRET": " "}, "EDGE_PROOF_SECRET is not set", id="secret blank"),
        pytest.param({"EDGE_PROOF_SECRET": "short"}, "at least 32", id="secret too short"),
        pytest.param({"TASKS_DATABASE_URL": "mysql://h/db"}, "TASKS_DATABASE_URL", id="unsupported database"),
        pytest.param({"TASKS_PROOF_MAX_AGE": "0"}, "TASKS_PROOF_MAX_AGE", id="max age 0"),
        pytest.param({"TASKS_PROOF_MAX_AGE": "301"}, "TASKS_PROOF_MAX_AGE", id="max age too long"),
        pytest.param({"TASKS_MAX_BODY_BYTES": "64k"}, "TASKS_MAX_BODY_BYTES", id="body size with a unit"),
        pytest.param({"TASKS_MAX_PAGE_SIZE": "-5"}, "TASKS_MAX_PAGE_SIZE", id="negative page size"),
        pytest.param({"TASKS_MAX_PAGE_SIZE": "1001"}, "TASKS_MAX_PAGE_SIZE", id="page size too large"),
        pytest.param({"TASKS_MAX_PAGE_SIZE": "\u00b2"}, "TASKS_MAX_PAGE_SIZE", id="superscript two (isdigit, not int)"),
        pytest.param({"TASKS_PROOF_MAX_AGE": "\u0663\u0660"}, "TASKS_PROOF_MAX_AGE", id="arabic-indic digits"),
    ],
)
def test_problems(environ, problem):
    with pytest.raises(ConfigError) as caught:
        load_config({"EDGE_PROOF_SECRET": SECRET, **environ})
    assert problem in str(caught.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        load_config({"TASKS_DATABASE_URL": "mysql://h", "TASKS_PROOF_MAX_AGE": "x", "TASKS_MAX_PAGE_SIZE": "0"})
    assert len(caught.value.problems) == 4  # database, secret, max age, page size
    assert all(name in str(caught.value) for name in ("TASKS_DATABASE_URL", "EDGE_PROOF_SECRET", "MAX_AGE", "PAGE"))
