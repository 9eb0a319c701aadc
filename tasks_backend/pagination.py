"""The list endpoint's query: status filter, sort order and keyset cursor (pure; no I/O).

``?status=all|pending|completed`` (default ``all``), ``?sort=created|title|due`` with a ``-`` prefix for
descending (default ``created``, oldest first), ``?limit=1..max_page_size`` and ``?cursor=``, the
``next_cursor`` of the previous page. A cursor is opaque to clients: it records the sort key and id of the
last task shown, and the next page starts strictly after it (keyset pagination), so tasks created or
deleted between two requests never shift a page, repeat a task or skip one that existed throughout.
``due`` puts undated tasks after every dated one. A cursor belongs to one sort; reusing it with
another is a 422.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast

from starlette.datastructures import QueryParams

from tasks_backend.errors import ValidationFailed
from tasks_backend.models import LAST_DUE_DATE, Task

Status = Literal["all", "pending", "completed"]
SortKey = Literal["created", "title", "due"]

STATUSES: tuple[Status, ...] = ("all", "pending", "completed")
SORT_KEYS: tuple[SortKey, ...] = ("created", "title", "due")
#: None: a task without a due date, which ``due`` sorts after every dated one.
CursorValue = dt.datetime | dt.date | str | None


@dataclass(frozen=True)
class Sort:
    key: SortKey
    descending: bool

    @property
    def name(self) -> str:
        return ("-" if self.descending else "") + self.key


@dataclass(frozen=True)
class Cursor:
    value: CursorValue
    id: str


@dataclass(frozen=True)
class ListQuery:
    status: Status
    sort: Sort
    limit: int
    after: Cursor | None


def sort_value(sort: Sort, task: Task) -> CursorValue:
    if sort.key == "created":
        return task.created_at
    if sort.key == "title":
        return task.title
    return task.due_date


def encode_cursor(sort: Sort, task: Task) -> str:
    value = sort_value(sort, task)
    shown = value if value is None or isinstance(value, str) else value.isoformat()
    raw = json.dumps({"s": sort.name, "v": shown, "i": task.id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _storable(text: str) -> bool:
    """Text a database can compare: JSON's ``"\\ud800"`` decodes to a lone surrogate (no UTF-8 form, a 500 in the
    driver) and PostgreSQL text cannot hold NUL; :func:`encode_cursor` never writes either."""
    return "\x00" not in text and not any("\ud800" <= ch <= "\udfff" for ch in text)


def decode_cursor(sort: Sort, cursor: str) -> Cursor:
    """Raise ValueError (saying what is wrong) unless ``cursor`` is one :func:`encode_cursor` made for ``sort``."""
    not_ours = "is not a cursor this service issued"
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        sort_name, raw, task_id = data["s"], data["v"], data["i"]
    except (ValueError, TypeError, KeyError) as exc:  # binascii, JSON and UTF-8 errors are ValueErrors
        raise ValueError(not_ours) from exc
    if not isinstance(raw, str | None) or not isinstance(task_id, str) or (raw is None and sort.key != "due"):
        raise ValueError(not_ours)
    if not _storable(task_id) or (raw is not None and not _storable(raw)):
        raise ValueError(not_ours)
    if sort_name != sort.name:
        raise ValueError(f"was issued for sort={sort_name}, not sort={sort.name}")
    value: CursorValue = raw
    try:
        if sort.key == "created" and raw is not None:
            value = dt.datetime.fromisoformat(raw)
            if value.tzinfo is None:
                raise ValueError("naive")
            # In UTC, as the database compares it: "0001-01-01T00:00:00+23:59" falls before year 1 (OverflowError).
            value = value.astimezone(dt.UTC)
        elif sort.key == "due" and raw is not None:
            value = dt.date.fromisoformat(raw)
            if value > LAST_DUE_DATE:  # never a task's date: undated tasks sort as 9999-12-31 and encode as null
                raise ValueError("past the last due date")
    except (ValueError, OverflowError) as exc:
        raise ValueError(not_ours) from exc
    return Cursor(value=value, id=task_id)


def _single(params: QueryParams, name: str, problems: dict[str, str]) -> str | None:
    values = params.getlist(name)
    if len(values) > 1:
        problems[name] = "must be given at most once"
        return None
    return values[0] if values else None


def list_query(params: QueryParams, *, default_limit: int, max_limit: int) -> ListQuery:
    """Parse the list endpoint's query string; unknown parameters are ignored, bad ones named in a 422."""
    problems: dict[str, str] = {}
    status_raw = _single(params, "status", problems) or "all"
    if status_raw not in STATUSES:
        problems["status"] = f"must be one of: {', '.join(STATUSES)}"
    sort_raw = _single(params, "sort", problems) or "created"
    key = sort_raw.removeprefix("-")
    if key not in SORT_KEYS:
        problems["sort"] = f"must be one of: {', '.join(SORT_KEYS)}, optionally prefixed with - for descending"
    sort = Sort(key=cast(SortKey, key), descending=sort_raw.startswith("-"))

    limit = default_limit
    limit_raw = _single(params, "limit", problems)
    if limit_raw is not None:
        # isascii: str.isdigit() is also true for "²" (int() fails) and "٣" (int() reads 3).
        if limit_raw.isascii() and limit_raw.isdigit() and 1 <= int(limit_raw) <= max_limit:
            limit = int(limit_raw)
        else:
            problems["limit"] = f"must be an integer from 1 to {max_limit}"

    after = None
    cursor_raw = _single(params, "cursor", problems)
    if cursor_raw is not None and "sort" not in problems:
        try:
            after = decode_cursor(sort, cursor_raw)
        except ValueError as exc:
            problems["cursor"] = str(exc)
    if problems:
        raise ValidationFailed(problems)
    return ListQuery(status=cast(Status, status_raw), sort=sort, limit=limit, after=after)


def page_body(items: list[Task], query: ListQuery) -> Mapping[str, object]:
    """The list response: the first ``limit`` tasks, and a cursor when more follow (one extra was fetched)."""
    shown = items[: query.limit]
    more = len(items) > query.limit
    return {
        "items": [task.to_json() for task in shown],
        "next_cursor": encode_cursor(query.sort, shown[-1]) if more else None,
    }
