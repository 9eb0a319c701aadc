"""The gateway's one error hierarchy. Every refusal the gateway makes is one of these, mapped to HTTP in one place.

Each class carries its HTTP ``status`` and a machine code ``error`` (the JSON body's ``"error"``); each instance
carries a human ``message`` (the JSON body's ``"message"``). ``headers(realm)`` gives the response headers the
refusal needs (``WWW-Authenticate`` for RFC 6750, ``Allow`` for 405). Messages never contain a token or any other
client-supplied secret: they are written for logs and clients alike.

    GatewayError                      500 internal_error
    ├── BadRequest                    400 bad_request
    │   ├── UnsafePath                400 unsafe_path         (ambiguous request-target, see routing.py)
    │   ├── InvalidRequest            400 invalid_request     (RFC 6750 §3.1: e.g. two Authorization headers)
    │   └── ConflictingFraming        400 conflicting_framing (Content-Length with Transfer-Encoding)
    ├── MissingToken                  401 missing_token       (RFC 6750 §3.1: challenge without an error code)
    ├── InvalidToken                  401 invalid_token       (+ ``reason`` for metrics, see REASONS)
    ├── Forbidden                     403 insufficient_scope  (owner mismatch, required claim absent)
    ├── NotFound                      404 not_found
    ├── MethodNotAllowed              405 method_not_allowed  (+ ``allow``)
    ├── RequestTimeout                408 request_timeout     (the client stopped sending its body)
    ├── PayloadTooLarge               413 payload_too_large
    ├── BadGateway                    502 bad_gateway         (upstream refused, reset or spoke garbage)
    ├── ServiceUnavailable            503 service_unavailable (e.g. an issuer has no usable keys)
    └── GatewayTimeout                504 gateway_timeout     (upstream too slow)

Starlette looks exception handlers up along the MRO, so one handler on ``GatewayError`` serves the whole tree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

#: ``InvalidToken.reason`` values, a closed set so a metrics label cannot be driven by a client.
REASONS = (
    "malformed",  # not a compact JWS, bad base64/JSON, non-ASCII, bad kid/alg header types
    "oversized",  # longer than the verifier's bound
    "bad_header",  # jku, x5u, jwk, x5c, crit or b64 present: keys come only from the issuer's jwks_url
    "alg_not_allowed",  # alg not in the issuer's allowlist (none, HS256, ...)
    "alg_mismatch",  # alg allowed but not the key's algorithm (ES256 header on an EdDSA key)
    "unknown_kid",  # no key with that kid, even after a refetch
    "bad_signature",
    "bad_issuer",  # iss missing, not a string, or not exactly a configured issuer
    "bad_audience",
    "missing_claim",  # exp, iat, iss, aud or sub absent
    "bad_claim",  # a claim of the wrong type or with unsafe content (empty sub, control characters)
    "expired",
    "not_yet_valid",  # nbf or iat in the future beyond the leeway
    "revoked",
)


def _quoted(value: str) -> str:
    """An RFC 9110 quoted-string body. RFC 6750 §3 restricts error_description to %x20-21 / %x23-5B / %x5D-7E:
    anything else (quotes, backslashes, controls, non-ASCII) is replaced, never escaped, so no client can
    smuggle a second auth-param into the challenge."""
    return "".join(ch if (" " <= ch <= "~" and ch not in '"\\') else "?" for ch in value)


class GatewayError(Exception):
    """Base of every refusal. ``status``/``error`` are per class, ``message`` per instance."""

    status: ClassVar[int] = 500
    error: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "internal gateway error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message if message is not None else self.default_message
        super().__init__(self.message)

    def headers(self, realm: str) -> list[tuple[str, str]]:
        """Response headers this refusal requires (none by default)."""
        return []


class BadRequest(GatewayError):
    status = 400
    error = "bad_request"
    default_message = "bad request"


class UnsafePath(BadRequest):
    """The request-target could be read two ways (issue 4, "One canonical path"); refused, never normalised."""

    error = "unsafe_path"
    default_message = "ambiguous or unsafe request path"


class ConflictingFraming(BadRequest):
    """RFC 9112 §6.3: Content-Length with Transfer-Encoding is a request-smuggling signature."""

    error = "conflicting_framing"
    default_message = "conflicting message framing headers"


class InvalidRequest(BadRequest):
    """RFC 6750 §3.1 ``invalid_request``: a malformed Authorization (two headers, an empty Bearer)."""

    error = "invalid_request"
    default_message = "malformed authorization request"

    def headers(self, realm: str) -> list[tuple[str, str]]:
        return [
            (
                "www-authenticate",
                f'Bearer realm="{_quoted(realm)}", error="invalid_request", '
                f'error_description="{_quoted(self.message)}"',
            )
        ]


class MissingToken(GatewayError):
    """RFC 6750 §3.1: a request without credentials gets a bare challenge, no error code."""

    status = 401
    error = "missing_token"
    default_message = "a bearer token is required"

    def headers(self, realm: str) -> list[tuple[str, str]]:
        return [("www-authenticate", f'Bearer realm="{_quoted(realm)}"')]


class InvalidToken(GatewayError):
    """RFC 6750 §3.1 ``invalid_token``. ``reason`` (one of :data:`REASONS`) is for metrics and logs."""

    status = 401
    error = "invalid_token"
    default_message = "the bearer token is invalid"

    def __init__(self, reason: str, message: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown InvalidToken reason {reason!r}")
        self.reason = reason
        super().__init__(message if message is not None else _REASON_MESSAGES[reason])

    def headers(self, realm: str) -> list[tuple[str, str]]:
        return [
            (
                "www-authenticate",
                f'Bearer realm="{_quoted(realm)}", error="invalid_token", error_description="{_quoted(self.message)}"',
            )
        ]


_REASON_MESSAGES = {
    "malformed": "the token is not a well-formed JWT",
    "oversized": "the token is too long",
    "bad_header": "the token header uses a forbidden parameter",
    "alg_not_allowed": "the token's algorithm is not allowed",
    "alg_mismatch": "the token's algorithm does not match its key",
    "unknown_kid": "the token's signing key is unknown",
    "bad_signature": "the token's signature is invalid",
    "bad_issuer": "the token's issuer is not trusted",
    "bad_audience": "the token is not meant for this audience",
    "missing_claim": "the token lacks a required claim",
    "bad_claim": "the token has a malformed claim",
    "expired": "the token has expired",
    "not_yet_valid": "the token is not valid yet",
    "revoked": "the token has been revoked",
}
assert set(_REASON_MESSAGES) == set(REASONS)


class Forbidden(GatewayError):
    """RFC 6750 §3.1 ``insufficient_scope``: a valid token that may not do this (owner mismatch)."""

    status = 403
    error = "insufficient_scope"
    default_message = "the token does not grant access to this resource"

    def headers(self, realm: str) -> list[tuple[str, str]]:
        return [
            (
                "www-authenticate",
                f'Bearer realm="{_quoted(realm)}", error="insufficient_scope", '
                f'error_description="{_quoted(self.message)}"',
            )
        ]


class NotFound(GatewayError):
    status = 404
    error = "not_found"
    default_message = "no route matches this path"


class MethodNotAllowed(GatewayError):
    """RFC 9110 §15.5.6: 405 carries ``Allow`` listing the methods a matching route accepts."""

    status = 405
    error = "method_not_allowed"
    default_message = "method not allowed on this path"

    def __init__(self, allow: Iterable[str], message: str | None = None) -> None:
        self.allow = tuple(sorted(set(allow)))
        super().__init__(message)

    def headers(self, realm: str) -> list[tuple[str, str]]:
        return [("allow", ", ".join(self.allow))]


class RequestTimeout(GatewayError):
    """RFC 9110 §15.5.9: the client sent no request-body bytes for the route's timeout (issue 8: a stalled upload
    held a gateway and an upstream connection for ever, since aiohttp starts its read timeout after the body)."""

    status = 408
    error = "request_timeout"
    default_message = "the request body stopped arriving"


class PayloadTooLarge(GatewayError):
    status = 413
    error = "payload_too_large"
    default_message = "request body too large"


class BadGateway(GatewayError):
    status = 502
    error = "bad_gateway"
    default_message = "the upstream service is unreachable or misbehaved"


class ServiceUnavailable(GatewayError):
    """503; ``retry_after`` (seconds) becomes ``Retry-After`` (RFC 9110 §10.2.3) when the gateway knows it."""

    status = 503
    error = "service_unavailable"
    default_message = "the gateway cannot serve this request right now"

    def __init__(self, message: str | None = None, *, retry_after: int | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)

    def headers(self, realm: str) -> list[tuple[str, str]]:
        return [] if self.retry_after is None else [("retry-after", str(max(0, self.retry_after)))]


class GatewayTimeout(GatewayError):
    status = 504
    error = "gateway_timeout"
    default_message = "the upstream service did not answer in time"
