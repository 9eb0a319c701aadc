"""What a client may send, checked field by field: pure functions from parsed JSON to values or errors.

Decisions (documented in the README):
- ``title``: a string, surrounding whitespace stripped, then 1-200 characters, no control characters.
- ``description``: a string of at most 1000 characters, stored verbatim (newlines and tabs allowed, other
  control characters not), or ``null``.
- ``due_date``: a calendar date ``YYYY-MM-DD`` (a day, so no time zone to get wrong) up to 9999-12-30 (the
  last day is the "no due date" sort key; ``models.UNDATED_SORT_KEY``), or ``null``.
- ``completed``: ``true`` or ``false``.
- Unknown keys are rejected (422), and so are the read-only ones (``id``, ``user_id``, ``created_at``,
  ``updated_at``, ``version``): a typo must not look like a successful write.
- Create and PUT take the whole new state: ``title`` is required, an omitted ``description``/``due_date``
  is ``null`` and an omitted ``completed`` is ``false``. PATCH changes only the keys it names.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Mapping
from typing import Literal

from tasks_backend.errors import ValidationFailed
from tasks_backend.models import DESCRIPTION_MAX, LAST_DUE_DATE, TITLE_MAX

Mode = Literal["create", "replace", "patch"]

WRITABLE = ("title", "description", "due_date", "completed")
READ_ONLY = frozenset({"id", "user_id", "created_at", "updated_at", "version"})
DEFAULTS: Mapping[str, object] = {"description": None, "due_date": None, "completed": False}

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DESCRIPTION_CONTROLS_ALLOWED = frozenset("\n\r\t")


def _text_problem(value: str, allowed_controls: frozenset[str] = frozenset()) -> str | None:
    # PostgreSQL cannot store NUL and UTF-8 cannot encode a lone surrogate (JSON "\ud800" yields one):
    # refusing them here keeps them from becoming a 500 in the driver.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text"
    if any(unicodedata.category(ch) == "Cc" and ch not in allowed_controls for ch in value):
        return "must not contain control characters"
    return None


def _title(value: object) -> tuple[str | None, str | None]:
    if not isinstance(value, str):
        return None, "must be a string"
    value = value.strip()
    if not 1 <= len(value) <= TITLE_MAX:
        return None, f"must be 1 to {TITLE_MAX} characters (surrounding whitespace is removed)"
    problem = _text_problem(value)
    return (None, problem) if problem else (value, None)


def _description(value: object) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    if not isinstance(value, str):
        return None, "must be a string or null"
    if len(value) > DESCRIPTION_MAX:
        return None, f"must be at most {DESCRIPTION_MAX} characters"
    problem = _text_problem(value, _DESCRIPTION_CONTROLS_ALLOWED)
    return (None, problem) if problem else (value, None)


def _due_date(value: object) -> tuple[dt.date | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, str) and _DATE.fullmatch(value):
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            day = None
        if day is not None and day <= LAST_DUE_DATE:
            return day, None
    return None, f"must be a date as YYYY-MM-DD, at most {LAST_DUE_DATE.isoformat()}, or null"


def _completed(value: object) -> tuple[bool | None, str | None]:
    if isinstance(value, bool):
        return value, None
    return None, "must be true or false"


_PARSERS = {"title": _title, "description": _description, "due_date": _due_date, "completed": _completed}


def task_fields(body: object, mode: Mode) -> dict[str, object]:
    """The column values a create (``create``), PUT (``replace``) or PATCH (``patch``) body asks for.

    Raises :class:`ValidationFailed` naming every bad field at once.
    """
    if not isinstance(body, dict):
        raise ValidationFailed({}, "the request body must be a JSON object")
    problems: dict[str, str] = {}
    values: dict[str, object] = {} if mode == "patch" else dict(DEFAULTS)
    for key, raw in body.items():
        if key in READ_ONLY:
            problems[key] = "is read-only"
        elif key not in _PARSERS:
            problems[key] = "is not a task field"
        else:
            value, problem = _PARSERS[key](raw)
            if problem:
                problems[key] = problem
            else:
                values[key] = value
    if mode != "patch" and "title" not in body:
        problems["title"] = "is required"
    if problems:
        raise ValidationFailed(problems)
    if not values:
        raise ValidationFailed({}, f"a PATCH must change at least one of: {', '.join(WRITABLE)}")
    return values
