"""Trust: identity only from a valid gateway proof, and the path's user must be the proven one.

Every case is tried on a read and on each kind of write, and after each the database is exactly as before:
no data is read (the response holds none) or written.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import select

from gateway import proof
from tasks_backend.models import tasks
from tests.tasks_backend.proofs import SECRET, GatewayClient, proof_headers

pytestmark = pytest.mark.anyio

Headers = list[tuple[str, str]]
# A case turns (the request, the current time) into the headers it is sent with.
Case = Callable[[httpx.Request, int], Headers]


def valid(request: httpx.Request, now: int, **overrides: object) -> Headers:
    kwargs: dict[str, object] = {"user_id": "alice", "timestamp": now, "email": "alice@example.com", **overrides}
    return list(proof_headers(request, **kwargs).items())  # type: ignore[arg-type]


def replace(headers: Headers, name: str, value: str) -> Headers:
    return [(k, value if k == name else v) for k, v in headers]


def signed_for(request: httpx.Request, now: int, *, method: str | None = None, target: str | None = None) -> Headers:
    """Headers signed for a different method or request-target than the one sent."""
    other = httpx.Request(method or request.method, "http://tasks.test" + (target or request.url.raw_path.decode()))
    return valid(other, now)


def tampered(request: httpx.Request, now: int) -> Headers:
    headers = valid(request, now)
    value = dict(headers)[proof.PROOF_HEADER]
    index = value.index(";s=") + 10
    flipped = value[:index] + ("A" if value[index] != "A" else "B") + value[index + 1 :]
    return replace(headers, proof.PROOF_HEADER, flipped)


TASK_PATH = "/api/alice/tasks/{id}"
OTHER_SECRET = b"another-secret-0123456789abcdefghijkl"

PROOF_FAILURES: list[object] = [
    pytest.param(lambda r, now: [], "missing", id="no proof"),
    pytest.param(lambda r, now: [("x-user-id", "alice")], "missing", id="identity headers without a proof"),
    pytest.param(tampered, "invalid", id="tampered signature"),
    pytest.param(lambda r, now: valid(r, now, secret=OTHER_SECRET), "invalid", id="wrong secret"),
    pytest.param(
        lambda r, now: signed_for(r, now, method="OPTIONS"),
        "invalid",
        id="proof for another method",
    ),
    pytest.param(
        lambda r, now: signed_for(r, now, target="/api/alice/tasks/" + "f" * 32),
        "invalid",
        id="proof for another path",
    ),
    pytest.param(
        lambda r, now: signed_for(r, now, target=r.url.raw_path.decode() + "?status=completed"),
        "invalid",
        id="proof for another query",
    ),
    pytest.param(
        lambda r, now: replace(valid(r, now, user_id="bob"), "x-user-id", "alice"),
        "invalid",
        id="proof for another user",
    ),
    pytest.param(
        lambda r, now: replace(valid(r, now), "x-user-email", "mallory@example.com"),
        "invalid",
        id="proof for another email",
    ),
    pytest.param(
        lambda r, now: replace(valid(r, now), "x-request-id", "another-request"),
        "invalid",
        id="proof for another request id",
    ),
    pytest.param(lambda r, now: valid(r, now - 31), "expired", id="expired"),
    pytest.param(lambda r, now: valid(r, now + 31), "expired", id="from the future"),
    pytest.param(lambda r, now: [*valid(r, now), ("x-user-id", "alice")], "duplicate_header", id="duplicate X-User-Id"),
    pytest.param(lambda r, now: [*valid(r, now), ("X-User-Id", "bob")], "duplicate_header", id="second X-User-Id"),
    pytest.param(
        lambda r, now: [*valid(r, now), (proof.PROOF_HEADER, dict(valid(r, now))[proof.PROOF_HEADER])],
        "duplicate_header",
        id="duplicate proof",
    ),
    pytest.param(
        lambda r, now: replace(valid(r, now), proof.PROOF_HEADER, "v1;t=abc;s=AAAA"), "malformed", id="malformed proof"
    ),
    pytest.param(
        lambda r, now: replace(valid(r, now), proof.PROOF_HEADER, "v2" + dict(valid(r, now))[proof.PROOF_HEADER][2:]),
        "malformed",
        id="unknown proof version",
    ),
    pytest.param(  # read as latin-1, t=0xb2 is "²": str.isdigit() is true, int() fails (was a 500)
        lambda r, now: [(proof.PROOF_HEADER.encode(), b"v1;t=\xb2;s=" + b"A" * 43)],
        "malformed",
        id="proof timestamp a superscript digit",
    ),
]

REQUESTS = [
    pytest.param("GET", "/api/alice/tasks", None, id="list"),
    pytest.param("GET", TASK_PATH, None, id="get"),
    pytest.param("POST", "/api/alice/tasks", {"title": "planted"}, id="create"),
    pytest.param("PUT", TASK_PATH, {"title": "planted"}, id="replace"),
    pytest.param("PATCH", TASK_PATH, {"title": "planted"}, id="patch"),
    pytest.param("PATCH", TASK_PATH + "/complete", None, id="toggle"),
    pytest.param("DELETE", TASK_PATH, None, id="delete"),
]


async def snapshot(engine) -> list[tuple[object, ...]]:
    async with engine.connect() as conn:
        return [tuple(row) for row in (await conn.execute(select(tasks).order_by(tasks.c.id))).all()]


@pytest.fixture
async def existing(client: GatewayClient) -> dict[str, object]:
    response = await client.post("/api/alice/tasks", json={"title": "alice's private task"})
    assert response.status_code == 201
    return response.json()


async def send(client: GatewayClient, method: str, path: str, body: object, case: Case) -> httpx.Response:
    request = client.http.build_request(method, path, json=body)
    request.headers = httpx.Headers([*request.headers.multi_items(), *case(request, int(client.clock()))])
    return await client.http.send(request)


def assert_reveals_nothing(response: httpx.Response) -> None:
    assert b"alice's private task" not in response.content
    assert proof.USER_ID_HEADER not in response.headers


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS)
@pytest.mark.parametrize(("case", "reason"), PROOF_FAILURES)
async def test_requests_without_a_valid_proof_are_401_and_touch_nothing(
    client, engine, existing, method, path, body, case, reason
):
    before = await snapshot(engine)

    response = await send(client, method, path.format(id=existing["id"]), body, case)

    assert response.status_code == 401, response.text
    assert response.json()["error"] == "unauthenticated"
    assert response.json()["reason"] == reason
    assert_reveals_nothing(response)
    assert await snapshot(engine) == before


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS)
@pytest.mark.parametrize(
    ("case", "status", "error"),
    [
        pytest.param(lambda r, now: valid(r, now, user_id=None, email=None), 401, "unauthenticated", id="anonymous"),
        pytest.param(lambda r, now: valid(r, now, user_id="bob"), 403, "forbidden", id="path names another user"),
        pytest.param(
            lambda r, now: valid(r, now, user_id="alice "), 403, "forbidden", id="user id with trailing space"
        ),
        pytest.param(lambda r, now: valid(r, now, user_id="ALICE"), 403, "forbidden", id="user id in another case"),
    ],
)
async def test_valid_proof_for_the_wrong_caller_touches_nothing(
    client, engine, existing, method, path, body, case, status, error
):
    before = await snapshot(engine)

    response = await send(client, method, path.format(id=existing["id"]), body, case)

    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert_reveals_nothing(response)
    assert await snapshot(engine) == before


async def test_anonymous_proof_says_why(client, existing):
    response = await send(client, "GET", "/api/alice/tasks", None, lambda r, now: valid(r, now, user_id=None))
    assert response.json() == {
        "error": "unauthenticated",
        "reason": "anonymous",
        "message": "this resource needs a signed-in user",
    }


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS)
async def test_a_replayed_request_is_refused(client, engine, existing, method, path, body):
    path = path.format(id=existing["id"])
    request = client.http.build_request(method, path, json=body)
    request.headers.update(dict(valid(request, int(client.clock()))))
    first = await client.http.send(request)
    assert first.status_code < 300, first.text
    after_first = await snapshot(engine)
    client.clock.advance(5)  # still within the proof's 30 s

    replayed = await client.http.send(request)

    assert replayed.status_code == 401
    assert replayed.json()["reason"] == "replayed"
    assert await snapshot(engine) == after_first


async def test_proof_is_checked_on_the_raw_path_not_the_decoded_one(client, existing):
    # %61 decodes to "a": a proof for /api/alice/tasks is not a proof for /api/%61lice/tasks.
    request = client.http.build_request("GET", "/api/alice/tasks")
    headers = valid(request, int(client.clock()))
    encoded = client.http.build_request("GET", "/api/%61lice/tasks", headers=headers)
    response = await client.http.send(encoded)
    assert response.status_code == 401
    assert response.json()["reason"] == "invalid"


async def test_a_proof_at_the_edge_of_its_lifetime_is_accepted(client, existing):
    response = await send(client, "GET", "/api/alice/tasks", None, lambda r, now: valid(r, now - 30))
    assert response.status_code == 200


async def test_rotated_secrets_both_verify(database_url, engine, clock):
    from tasks_backend.app import create_app
    from tasks_backend.config import load_config

    new = b"a-brand-new-proof-secret-0123456789abcdef"
    config = load_config({"TASKS_DATABASE_URL": database_url, "EDGE_PROOF_SECRET": f"{new.decode()},{SECRET.decode()}"})
    client = GatewayClient(create_app(config, engine=engine, clock=clock), clock)
    try:
        for secret in (new, SECRET):
            response = await send(
                client, "POST", "/api/alice/tasks", {"title": "t"}, lambda r, now, s=secret: valid(r, now, secret=s)
            )
            assert response.status_code == 201, response.text
    finally:
        await client.aclose()
