"""The ``tasks`` table and the task as the API shows it.

The indexes serve the list endpoint's keyset pagination: every sort is ``(sort key, id)`` within one user,
with and without the ``completed`` filter, so a page is one index range scan however large the table.
``due`` sorts undated tasks after every dated one, as if due on 9999-12-31: the same order on SQLite and
PostgreSQL, served by one index in both directions.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    func,
    literal_column,
)
from sqlalchemy.sql.elements import ColumnElement

TITLE_MAX = 200
DESCRIPTION_MAX = 1000
USER_ID_MAX = 255
ID_LENGTH = 32


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in Python, naive UTC in the database: one representation on both backends."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; pass an aware UTC datetime")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


metadata = MetaData()

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(ID_LENGTH), primary_key=True),
    Column("user_id", String(USER_ID_MAX), nullable=False),
    Column("title", String(TITLE_MAX), nullable=False),
    Column("description", String(DESCRIPTION_MAX), nullable=True),
    Column("completed", Boolean, nullable=False),
    Column("due_date", Date, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("version", Integer, nullable=False),
)

#: Spelled as a literal, not a bound parameter: SQLite uses an index on an expression only when the query
#: repeats the expression exactly as the index declares it.
DUE_SORT_SQL = "coalesce(due_date, '9999-12-31')"
#: The sentinel, always as SQL text: asyncpg sends ``date.max`` (9999-12-31) as PostgreSQL's ``infinity``, so
#: a bound 9999-12-31 would never equal it. For the same reason due dates stop at 9999-12-30 (validation).
UNDATED_SORT_KEY: ColumnElement[dt.date] = literal_column("'9999-12-31'", Date)
LAST_DUE_DATE = dt.date(9999, 12, 30)
due_sort: ColumnElement[dt.date] = func.coalesce(tasks.c.due_date, UNDATED_SORT_KEY)

Index("ix_tasks_user_created", tasks.c.user_id, tasks.c.created_at, tasks.c.id)
Index("ix_tasks_user_title", tasks.c.user_id, tasks.c.title, tasks.c.id)
Index("ix_tasks_user_due", tasks.c.user_id, literal_column(DUE_SORT_SQL), tasks.c.id)
Index("ix_tasks_user_completed_created", tasks.c.user_id, tasks.c.completed, tasks.c.created_at, tasks.c.id)
Index("ix_tasks_user_completed_title", tasks.c.user_id, tasks.c.completed, tasks.c.title, tasks.c.id)
Index("ix_tasks_user_completed_due", tasks.c.user_id, tasks.c.completed, literal_column(DUE_SORT_SQL), tasks.c.id)


def isoformat(value: dt.datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` and milliseconds, which every JSON client (and JavaScript) parses."""
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Task:
    id: str
    user_id: str
    title: str
    description: str | None
    completed: bool
    due_date: dt.date | None
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int

    @property
    def etag(self) -> str:
        """A strong entity tag (RFC 9110 8.8.3): the version changes with every write."""
        return f'"{self.version}"'

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "title": self.title,
            "description": self.description,
            "completed": self.completed,
            "due_date": None if self.due_date is None else self.due_date.isoformat(),
            "created_at": isoformat(self.created_at),
            "updated_at": isoformat(self.updated_at),
            "version": self.version,
        }
