"""Reading a JSON request body: media type first (415), then size (413), then syntax (400)."""

from __future__ import annotations

import json
from typing import Any, NoReturn

from starlette.requests import Request

from tasks_backend.errors import ContentTooLarge, MalformedRequest, UnsupportedMediaType


def _is_json(content_types: list[str]) -> bool:
    if len(content_types) != 1:
        return False
    media_type, *params = (part.strip() for part in content_types[0].split(";"))
    if media_type.lower() != "application/json":
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers that disagree on which duplicate wins are a classic smuggling gap; refuse the ambiguity.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN and Infinity; RFC 8259 does not.


async def read_json(request: Request, max_bytes: int) -> object:
    """The parsed body. Too-large bodies are refused by Content-Length before reading, and a body without
    one (chunked) is counted while it streams and abandoned as soon as it passes ``max_bytes``."""
    if not _is_json(request.headers.getlist("content-type")):
        raise UnsupportedMediaType("send the body as application/json (UTF-8)")
    too_large = ContentTooLarge(f"the body must be at most {max_bytes} bytes")
    length = request.headers.get("content-length")
    if length is not None and length.isascii() and length.isdigit() and int(length) > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    try:
        return json.loads(
            b"".join(chunks).decode("utf-8"),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_no_constants,
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MalformedRequest(f"the body is not valid JSON: {exc}") from exc
