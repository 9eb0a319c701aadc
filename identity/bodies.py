"""Request bodies: media types, JSON/form parsing and Better Auth's (zod 4) validation messages (reference 2.2,
2.4). Validation is a table of fields; messages are ``[body.<field>] <zod message>`` joined with ``; ``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

from starlette.requests import Request

from identity.errors import IdentityError, bad_request, validation_error

ALLOWED_MEDIA_TYPES = ("application/x-www-form-urlencoded", "application/json")
MAX_BODY_BYTES = 64 * 1024


class _Undefined:
    """JavaScript's ``undefined``: no body, or a missing key."""

    def __repr__(self) -> str:
        return "undefined"


UNDEFINED: Any = _Undefined()

# zod 4's default z.email() pattern. JavaScript's ``$`` (no ``m`` flag) is the end of the input; Python's ``$``
# also matches before a final "\n", so the port anchors with fullmatch: "victim@x.com\n" is not an email (it
# was a second account for the victim's mailbox). The character classes leave no room for whitespace or controls.
_EMAIL = re.compile(
    r"(?!\.)(?!.*\.\.)([A-Za-z0-9_'+\-.]*)[A-Za-z0-9_+-]@([A-Za-z0-9][A-Za-z0-9\-]*\.)+[A-Za-z]{2,}", re.ASCII
)


def is_email(value: str) -> bool:
    return _EMAIL.fullmatch(value) is not None


def js_type(value: Any) -> str:
    if value is UNDEFINED:
        return "undefined"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def js_length(value: str) -> int:
    """JavaScript's ``String.length`` (UTF-16 code units), which Better Auth's length limits count."""
    return len(value.encode("utf-16-le")) // 2


@dataclass(frozen=True)
class Body:
    value: Any  # dict/list/str/... from JSON, a dict of str from a form, or UNDEFINED
    form: bool


async def read_body(request: Request) -> Body:
    content_type = request.headers.get("content-type")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise IdentityError(413, "PAYLOAD_TOO_LARGE", "Request body too large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if content_type is None:
        return Body(UNDEFINED, form=False)
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in ALLOWED_MEDIA_TYPES:
        raise IdentityError(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f'Content-Type "{media}" is not allowed. Allowed types: {", ".join(ALLOWED_MEDIA_TYPES)}',
        )
    if media == "application/json":
        if not raw.strip():
            return Body(UNDEFINED, form=False)
        try:
            return Body(json.loads(raw), form=False)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested deeper than the parser goes
            raise bad_request("BAD_REQUEST", "Invalid JSON in request body") from None
    # URLSearchParams semantics: the last repeated key wins.
    return Body(dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)), form=True)


FieldType = Literal["string", "email", "nonempty", "boolean"]


@dataclass(frozen=True)
class Field:
    name: str
    kind: FieldType
    required: bool = True


SIGN_UP = (
    Field("name", "string"),
    Field("email", "email"),
    Field("password", "nonempty"),
    Field("image", "string", required=False),
    Field("callbackURL", "string", required=False),
    Field("rememberMe", "boolean", required=False),
)
SIGN_IN = (
    Field("email", "string"),
    Field("password", "string"),
    Field("callbackURL", "string", required=False),
    Field("rememberMe", "boolean", required=False),
)
CHANGE_PASSWORD = (
    Field("newPassword", "string"),
    Field("currentPassword", "string"),
    Field("revokeOtherSessions", "boolean", required=False),
)
REVOKE_SESSION = (Field("token", "string"),)

_FORM_BOOLEANS = {"true": True, "on": True, "false": False}
# Hashed, never stored or sent: a NUL in a password is only a character.
_PASSWORD_FIELDS = frozenset({"password", "newPassword", "currentPassword"})


def _text_problem(field: Field, value: str) -> str | None:
    """JSON ``"\ud800"`` decodes to a lone surrogate, which no UTF-8 database, password hasher or header can carry,
    and PostgreSQL cannot store NUL. JavaScript would carry both further; here each was a 500 (issue 8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "Invalid input: expected valid Unicode text"
    if "\x00" in value and field.name not in _PASSWORD_FIELDS:
        return "Invalid input: NUL characters are not allowed"
    return None


def validate(body: Body, fields: tuple[Field, ...], *, record: bool = False) -> dict[str, Any]:
    """Check ``body`` against ``fields`` and return the known fields (absent optional ones omitted). Unknown
    keys are ignored, as Better Auth does. ``record`` adds sign-up's second schema (``.and(z.record(...))``)."""
    value = body.value
    if not isinstance(value, dict):
        kind = js_type(value)
        messages = [f"[body] Invalid input: expected object, received {kind}"]
        if record:
            messages.append(f"[body] Invalid input: expected record, received {kind}")
        raise validation_error(messages)
    messages = []
    result: dict[str, Any] = {}
    for field in fields:
        item = value.get(field.name, UNDEFINED)
        if item is UNDEFINED and not field.required:
            continue
        if field.kind == "boolean":
            if body.form and isinstance(item, str) and item.lower() in _FORM_BOOLEANS:
                item = _FORM_BOOLEANS[item.lower()]  # forms carry only strings (a deliberate leniency)
            if not isinstance(item, bool):
                messages.append(f"[body.{field.name}] Invalid input: expected boolean, received {js_type(item)}")
                continue
        elif not isinstance(item, str):
            messages.append(f"[body.{field.name}] Invalid input: expected string, received {js_type(item)}")
            continue
        elif (problem := _text_problem(field, item)) is not None:
            messages.append(f"[body.{field.name}] {problem}")
            continue
        elif field.kind == "email" and not is_email(item):
            messages.append(f"[body.{field.name}] Invalid email address")
            continue
        elif field.kind == "nonempty" and not item:
            messages.append(f"[body.{field.name}] Too small: expected string to have >=1 characters")
            continue
        result[field.name] = item
    if messages:
        raise validation_error(messages)
    return result
