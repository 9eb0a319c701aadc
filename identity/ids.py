"""Random identifiers in Better Auth's alphabet: 32 characters of [a-zA-Z0-9] (about 190 bits)."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def generate_id(length: int = 32) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))
