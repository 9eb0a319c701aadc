"""JWT minting (reference 2.7): header ``{alg, kid}`` (no ``typ``), payload = the user plus registered claims.

Payload: ``iat``, the user's fields, ``sub`` (user id), ``exp`` (``iat + IDENTITY_JWT_TTL``), ``iss`` and ``aud``
(both the base URL's origin; ``aud`` a string) and ``sid``, the session id (our extension: gateways drop tokens
whose ``sid`` appears in the revocation feed).
"""

from __future__ import annotations

import json
from typing import Any

from identity import keys


def mint(key: keys.SigningKey, claims: dict[str, Any]) -> str:
    assert key.private is not None
    payload = keys.b64url(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode())
    signing_input = f"{key.header_b64}.{payload}"
    return f"{signing_input}.{keys.b64url(keys.sign(key.private, signing_input.encode()))}"


def claims_for(user: dict[str, Any], session_id: str, now: int, ttl: int, origin: str) -> dict[str, Any]:
    return {
        "iat": now,
        **user,
        "sub": user["id"],
        "exp": now + ttl,
        "iss": origin,
        "aud": origin,
        "sid": session_id,
    }
