"""Pure parsing: If-Match (RFC 9110 13.1.1) and list cursors."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest

from tasks_backend.models import Task
from tasks_backend.pagination import Sort, decode_cursor, encode_cursor
from tasks_backend.preconditions import IfMatch, parse_if_match


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param([], None, id="absent"),
        pytest.param(['"3"'], IfMatch(False, frozenset({3})), id="one tag"),
        pytest.param(['"3", "5"'], IfMatch(False, frozenset({3, 5})), id="a list"),
        pytest.param(['"3"', '"5"'], IfMatch(False, frozenset({3, 5})), id="two header lines"),
        pytest.param(["*"], IfMatch(True, frozenset()), id="any"),
        pytest.param(['"3", *'], IfMatch(True, frozenset()), id="any within a list"),
        pytest.param(['W/"3"'], IfMatch(False, frozenset()), id="weak tags never match"),
        pytest.param(["3"], IfMatch(False, frozenset()), id="unquoted"),
        pytest.param(['"-3"'], IfMatch(False, frozenset()), id="negative"),
        pytest.param(['"99999999999999999999"'], IfMatch(False, frozenset()), id="absurdly large"),
        pytest.param([""], IfMatch(False, frozenset()), id="empty: present, matches nothing"),
        # str.isdigit() is true for these, int() fails on the first and reads the others as 2 and 3: not our tags.
        pytest.param(['"\u00b2"'], IfMatch(False, frozenset()), id="superscript two (latin-1 byte 0xb2)"),
        pytest.param(['"\u0663"'], IfMatch(False, frozenset()), id="arabic-indic three"),
        pytest.param(['"\uff12"'], IfMatch(False, frozenset()), id="fullwidth two"),
    ],
)
def test_parse_if_match(values, expected):
    assert parse_if_match(values) == expected


def task(**fields: object) -> Task:
    base = {
        "id": "a" * 32,
        "user_id": "u",
        "title": "t",
        "description": None,
        "completed": False,
        "due_date": None,
        "created_at": dt.datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC),
        "updated_at": dt.datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC),
        "version": 1,
    }
    return Task(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sort", "fields", "value"),
    [
        pytest.param(Sort("created", False), {}, dt.datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC), id="created"),
        pytest.param(Sort("title", True), {"title": 'quotes " and ünïcode'}, 'quotes " and ünïcode', id="-title"),
        pytest.param(Sort("due", False), {"due_date": dt.date(2026, 2, 3)}, dt.date(2026, 2, 3), id="due"),
        pytest.param(Sort("due", True), {}, None, id="-due, undated"),
    ],
)
def test_cursor_round_trip(sort, fields, value):
    cursor = encode_cursor(sort, task(**fields))
    assert "=" not in cursor and "/" not in cursor and "+" not in cursor  # safe in a query string as is
    decoded = decode_cursor(sort, cursor)
    assert (decoded.value, decoded.id) == (value, "a" * 32)


def forged(**data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


@pytest.mark.parametrize(
    ("sort", "cursor"),
    [
        pytest.param(Sort("created", False), "%%%", id="not base64"),
        pytest.param(Sort("created", False), base64.urlsafe_b64encode(b"\xff\xfe").decode(), id="not UTF-8"),
        pytest.param(Sort("created", False), forged(s="created", v="2025-01-01T00:00:00", i="x"), id="naive time"),
        pytest.param(Sort("created", False), forged(s="created", v=None, i="x"), id="null time"),
        pytest.param(Sort("title", False), forged(s="title", v=5, i="x"), id="number title"),
        pytest.param(Sort("due", False), forged(s="due", v="someday", i="x"), id="bad date"),
        pytest.param(Sort("due", False), forged(s="due", v="2025-01-01", i=7), id="number id"),
        pytest.param(Sort("due", False), forged(s="due", v="2025-01-01"), id="no id"),
        pytest.param(Sort("due", True), forged(s="due", v="2025-01-01", i="x"), id="another direction"),
        pytest.param(Sort("title", False), forged(s="title", v="\ud800", i="x"), id="title lone surrogate"),
        pytest.param(Sort("title", False), forged(s="title", v="a\x00", i="x"), id="title NUL"),
        pytest.param(
            Sort("created", False), forged(s="created", v="2025-01-01T00:00:00+00:00", i="\udfff"), id="id surrogate"
        ),
        pytest.param(Sort("created", False), forged(s="created", v="2025-01-01T00:00:00Z", i="x\x00"), id="id NUL"),
        pytest.param(
            Sort("created", False), forged(s="created", v="0001-01-01T00:00:00+23:59", i="x"), id="before year 1 in UTC"
        ),
        pytest.param(
            Sort("created", False), forged(s="created", v="9999-12-31T23:59:59-23:59", i="x"), id="after 9999 in UTC"
        ),
        pytest.param(Sort("due", False), forged(s="due", v="9999-12-31", i="x"), id="due past the last due date"),
    ],
)
def test_foreign_cursors_are_refused(sort, cursor):
    with pytest.raises(ValueError, match=r"^(is not a cursor this service issued|was issued for sort=)"):
        decode_cursor(sort, cursor)
