from __future__ import annotations

import pytest

from gateway import errors
from gateway.errors import (
    REASONS,
    BadGateway,
    BadRequest,
    ConflictingFraming,
    Forbidden,
    GatewayError,
    GatewayTimeout,
    InvalidRequest,
    InvalidToken,
    MethodNotAllowed,
    MissingToken,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsafePath,
)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        pytest.param(BadRequest(), 400, "bad_request", id="bad request"),
        pytest.param(UnsafePath(), 400, "unsafe_path", id="unsafe path"),
        pytest.param(ConflictingFraming(), 400, "conflicting_framing", id="conflicting framing"),
        pytest.param(InvalidRequest(), 400, "invalid_request", id="invalid request"),
        pytest.param(MissingToken(), 401, "missing_token", id="missing token"),
        pytest.param(InvalidToken("expired"), 401, "invalid_token", id="invalid token"),
        pytest.param(Forbidden(), 403, "insufficient_scope", id="forbidden"),
        pytest.param(NotFound(), 404, "not_found", id="not found"),
        pytest.param(MethodNotAllowed(["GET"]), 405, "method_not_allowed", id="method not allowed"),
        pytest.param(PayloadTooLarge(), 413, "payload_too_large", id="payload too large"),
        pytest.param(BadGateway(), 502, "bad_gateway", id="bad gateway"),
        pytest.param(ServiceUnavailable(), 503, "service_unavailable", id="service unavailable"),
        pytest.param(GatewayTimeout(), 504, "gateway_timeout", id="gateway timeout"),
    ],
)
def test_status_and_code(error: GatewayError, status: int, code: str) -> None:
    assert isinstance(error, GatewayError)
    assert (error.status, error.error) == (status, code)
    assert error.message and str(error) == error.message


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(MissingToken(), [("www-authenticate", 'Bearer realm="edge"')], id="missing token: no error code"),
        pytest.param(
            InvalidToken("expired"),
            [
                (
                    "www-authenticate",
                    'Bearer realm="edge", error="invalid_token", error_description="the token has expired"',
                )
            ],
            id="invalid token",
        ),
        pytest.param(
            InvalidRequest("more than one Authorization header"),
            [
                (
                    "www-authenticate",
                    'Bearer realm="edge", error="invalid_request", '
                    'error_description="more than one Authorization header"',
                )
            ],
            id="invalid request",
        ),
        pytest.param(
            Forbidden("nope"),
            [("www-authenticate", 'Bearer realm="edge", error="insufficient_scope", error_description="nope"')],
            id="insufficient scope",
        ),
        pytest.param(MethodNotAllowed(["POST", "GET", "GET"]), [("allow", "GET, POST")], id="allow sorted unique"),
        pytest.param(NotFound(), [], id="no headers"),
        pytest.param(ServiceUnavailable(), [], id="503 without retry-after"),
        pytest.param(ServiceUnavailable(retry_after=10), [("retry-after", "10")], id="503 with retry-after"),
    ],
)
def test_headers(error: GatewayError, expected: list[tuple[str, str]]) -> None:
    assert error.headers("edge") == expected


def test_challenge_cannot_be_broken_out_of() -> None:
    header = InvalidToken("malformed", 'x", error="other\\\r\nSet-Cookie: a=b é').headers('re"alm')[0][1]
    assert header == (
        'Bearer realm="re?alm", error="invalid_token", error_description="x?, error=?other???Set-Cookie: a=b ?"'
    )


def test_every_reason_has_a_message_and_unknown_reasons_are_refused() -> None:
    for reason in REASONS:
        assert InvalidToken(reason).reason == reason
    with pytest.raises(ValueError, match="unknown InvalidToken reason"):
        InvalidToken("because")


def test_subclass_tree() -> None:
    assert issubclass(UnsafePath, BadRequest)
    assert issubclass(InvalidRequest, BadRequest)
    # The module docstring draws the tree; every public error class must appear in it.
    names = [n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, GatewayError)]
    assert errors.__doc__ is not None
    for name in names:
        assert name in errors.__doc__
