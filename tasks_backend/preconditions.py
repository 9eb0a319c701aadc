"""``If-Match`` (RFC 9110 13.1.1) for optimistic concurrency.

Every task response carries ``ETag: "<version>"``; the version grows by one with every write. A PUT, PATCH
or DELETE with ``If-Match`` applies only if the task's current version is among the listed tags (``*``:
any existing task), otherwise 412 and nothing changes. If-Match uses the strong comparison, so weak tags
(``W/"3"``) and anything that is not one of our tags never match. The check is part of the UPDATE's WHERE
clause, so there is no window between checking and writing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TAG = re.compile(r'\s*(W/)?"([^"]*)"\s*')


@dataclass(frozen=True)
class IfMatch:
    """``any_version``: ``If-Match: *``. Otherwise the versions the client accepts (possibly none)."""

    any_version: bool
    versions: frozenset[int]


def parse_if_match(values: list[str]) -> IfMatch | None:
    """None when the request has no If-Match (the write is unconditional, though still atomic)."""
    if not values:
        return None
    versions: set[int] = set()
    for value in values:
        for item in value.split(","):
            if item.strip() == "*":
                return IfMatch(any_version=True, versions=frozenset())
            match = _TAG.fullmatch(item)
            tag = match.group(2) if match and not match.group(1) else ""
            # isascii: str.isdigit() is also true for "²" (latin-1 0xb2), which int() refuses.
            if tag.isascii() and tag.isdigit() and len(tag) < 10:
                versions.add(int(tag))
    return IfMatch(any_version=False, versions=frozenset(versions))
