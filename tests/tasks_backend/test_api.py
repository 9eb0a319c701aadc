"""Every endpoint and every error of the tasks API, in-process, with a valid gateway proof (both databases)."""

from __future__ import annotations

import json
import logging
import re

import pytest
from sqlalchemy import func, select

from tasks_backend.models import tasks
from tests.tasks_backend.proofs import FakeClock, GatewayClient

pytestmark = pytest.mark.anyio

TASKS = "/api/alice/tasks"
CREATED_AT = "2025-10-09T08:53:20.000Z"  # proofs.START as the API shows it


async def create(client: GatewayClient, **body: object) -> dict[str, object]:
    response = await client.post(TASKS, json={"title": "a task", **body})
    assert response.status_code == 201, response.text
    return response.json()


async def row_count(engine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(tasks))).scalar_one()


# --- create -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            {"title": "buy milk"},
            {"title": "buy milk", "description": None, "due_date": None, "completed": False},
            id="title only",
        ),
        pytest.param({"title": "  padded \t"}, {"title": "padded"}, id="title is stripped"),
        pytest.param({"title": "x" * 200}, {"title": "x" * 200}, id="title of 200 characters"),
        pytest.param({"title": "é" * 200}, {"title": "é" * 200}, id="200 non-ASCII characters"),
        pytest.param(
            {"title": "t", "description": "line 1\n\tline 2", "due_date": "2025-12-31"},
            {"description": "line 1\n\tline 2", "due_date": "2025-12-31"},
            id="description and due date",
        ),
        pytest.param({"title": "t", "description": "d" * 1000}, {"description": "d" * 1000}, id="description 1000"),
        pytest.param({"title": "t", "description": None, "due_date": None}, {"due_date": None}, id="explicit nulls"),
        pytest.param({"title": "t", "due_date": "9999-12-30"}, {"due_date": "9999-12-30"}, id="the last due date"),
        pytest.param({"title": "t", "due_date": "0001-01-01"}, {"due_date": "0001-01-01"}, id="the first due date"),
        pytest.param({"title": "t", "completed": True}, {"completed": True}, id="created completed"),
    ],
)
async def test_create_returns_the_task_with_location_and_etag(client, body, expected):
    response = await client.post(TASKS, json=body)

    assert response.status_code == 201, response.text
    task = response.json()
    assert {key: task[key] for key in expected} == expected
    assert re.fullmatch(r"[0-9a-f]{32}", task["id"])
    assert task["user_id"] == "alice"
    assert task["created_at"] == task["updated_at"] == CREATED_AT
    assert task["version"] == 1
    assert response.headers["etag"] == '"1"'
    assert response.headers["location"] == f"{TASKS}/{task['id']}"
    fetched = await client.get(response.headers["location"])
    assert fetched.status_code == 200
    assert fetched.json() == task


async def test_create_accepts_a_json_charset_parameter(client):
    response = await client.post(
        TASKS, content=b'{"title": "x"}', headers={"content-type": "Application/JSON; charset=UTF-8"}
    )
    assert response.status_code == 201, response.text


async def test_ids_are_unique(client):
    ids = {(await create(client))["id"] for _ in range(20)}
    assert len(ids) == 20


# --- validation (422 naming every bad field, nothing written) -----------------------------------------------

INVALID_BODIES = [
    pytest.param({}, {"title"}, id="title missing"),
    pytest.param({"title": ""}, {"title"}, id="title empty"),
    pytest.param({"title": " \t\n "}, {"title"}, id="title only whitespace"),
    pytest.param({"title": "x" * 201}, {"title"}, id="title of 201 characters"),
    pytest.param({"title": None}, {"title"}, id="title null"),
    pytest.param({"title": 42}, {"title"}, id="title a number"),
    pytest.param({"title": ["a"]}, {"title"}, id="title a list"),
    pytest.param({"title": "a\x00b"}, {"title"}, id="title with NUL"),
    pytest.param({"title": "a\nb"}, {"title"}, id="title with a newline"),
    pytest.param({"title": "t", "description": "d" * 1001}, {"description"}, id="description of 1001"),
    pytest.param({"title": "t", "description": 5}, {"description"}, id="description a number"),
    pytest.param({"title": "t", "description": "a\x00b"}, {"description"}, id="description with NUL"),
    pytest.param({"title": "t", "due_date": "2025-02-30"}, {"due_date"}, id="due date not a day"),
    pytest.param({"title": "t", "due_date": "tomorrow"}, {"due_date"}, id="due date words"),
    pytest.param({"title": "t", "due_date": "2025-01-01T00:00:00Z"}, {"due_date"}, id="due date a datetime"),
    pytest.param({"title": "t", "due_date": "20250101"}, {"due_date"}, id="due date basic format"),
    pytest.param({"title": "t", "due_date": "9999-12-31"}, {"due_date"}, id="due date past the last day"),
    pytest.param({"title": "t", "due_date": 20250101}, {"due_date"}, id="due date a number"),
    pytest.param({"title": "t", "completed": "yes"}, {"completed"}, id="completed a string"),
    pytest.param({"title": "t", "completed": 1}, {"completed"}, id="completed a number"),
    pytest.param({"title": "t", "priority": 1}, {"priority"}, id="unknown key"),
    pytest.param({"title": "t", "id": "0" * 32}, {"id"}, id="read-only id"),
    pytest.param({"title": "t", "user_id": "bob"}, {"user_id"}, id="read-only user_id"),
    pytest.param({"title": "t", "version": 7}, {"version"}, id="read-only version"),
    pytest.param(
        {"title": "", "due_date": "soon", "completed": None, "colour": "red"},
        {"title", "due_date", "completed", "colour"},
        id="every bad field named at once",
    ),
]


@pytest.mark.parametrize(("body", "bad_fields"), INVALID_BODIES)
async def test_create_rejects_invalid_fields(client, engine, body, bad_fields):
    response = await client.post(TASKS, json=body)

    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"
    assert set(response.json()["fields"]) == bad_fields
    assert await row_count(engine) == 0


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"[]", id="array"),
        pytest.param(b'"title"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b'{"title": "\\ud800"}', id="lone surrogate"),
    ],
)
async def test_create_rejects_bodies_that_are_json_but_not_a_task(client, engine, raw):
    response = await client.post(TASKS, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"
    assert await row_count(engine) == 0


@pytest.mark.parametrize(("body", "bad_fields"), INVALID_BODIES[1:])
async def test_put_rejects_invalid_fields_and_changes_nothing(client, body, bad_fields):
    task = await create(client)
    response = await client.put(f"{TASKS}/{task['id']}", json=body)
    assert response.status_code == 422, response.text
    assert set(response.json()["fields"]) == bad_fields
    assert (await client.get(f"{TASKS}/{task['id']}")).json() == task


@pytest.mark.parametrize(
    ("body", "bad_fields"),
    [
        pytest.param({}, set(), id="empty patch"),
        pytest.param({"title": ""}, {"title"}, id="title empty"),
        pytest.param({"title": None}, {"title"}, id="title null"),
        pytest.param({"description": "d" * 1001}, {"description"}, id="description too long"),
        pytest.param({"due_date": "2025-13-01"}, {"due_date"}, id="due date month 13"),
        pytest.param({"completed": "false"}, {"completed"}, id="completed a string"),
        pytest.param({"created_at": CREATED_AT}, {"created_at"}, id="read-only created_at"),
        pytest.param({"title": "ok", "nope": 1}, {"nope"}, id="a good and an unknown key"),
    ],
)
async def test_patch_rejects_invalid_fields_and_changes_nothing(client, body, bad_fields):
    task = await create(client)
    response = await client.patch(f"{TASKS}/{task['id']}", json=body)
    assert response.status_code == 422, response.text
    assert set(response.json()["fields"]) == bad_fields
    assert (await client.get(f"{TASKS}/{task['id']}")).json() == task


# --- body errors: 400 / 413 / 415 on every endpoint that takes a body ----------------------------------------

BODY_ENDPOINTS = [
    pytest.param("POST", "", id="create"),
    pytest.param("PUT", "/{id}", id="replace"),
    pytest.param("PATCH", "/{id}", id="patch"),
]
JSON = {"content-type": "application/json"}
BODY_ERRORS = [
    pytest.param(b'{"title": ', JSON, 400, id="truncated JSON"),
    pytest.param(b"", JSON, 400, id="empty body"),
    pytest.param(b'{"title": "\xff"}', JSON, 400, id="invalid UTF-8"),
    pytest.param(b'{"title": "a", "title": "b"}', JSON, 400, id="duplicate key"),
    pytest.param(b'{"title": "a", "x": NaN}', JSON, 400, id="NaN"),
    pytest.param(b"[" * 30_000 + b"]" * 30_000, JSON, 400, id="nested too deep"),
    pytest.param(b'{"title": "a"}', {"content-type": "text/plain"}, 415, id="text/plain"),
    pytest.param(b'{"title": "a"}', {}, 415, id="no content type"),
    pytest.param(b'{"title": "a"}', {"content-type": "application/jsonx"}, 415, id="application/jsonx"),
    pytest.param(b'{"title": "a"}', {"content-type": "application/json; charset=latin-1"}, 415, id="latin-1"),
    pytest.param(b'{"title": "a"}', {"content-type": "application/x-www-form-urlencoded"}, 415, id="form"),
    pytest.param(b'{"title": "' + b"a" * 70_000 + b'"}', JSON, 413, id="over the limit"),
]


@pytest.mark.parametrize(("method", "suffix"), BODY_ENDPOINTS)
@pytest.mark.parametrize(("raw", "headers", "status"), BODY_ERRORS)
async def test_body_errors(client, engine, method, suffix, raw, headers, status):
    task = await create(client)
    response = await client.request(method, TASKS + suffix.format(id=task["id"]), content=raw, headers=headers)

    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] in {"malformed_request", "unsupported_media_type", "content_too_large"}
    assert await row_count(engine) == 1
    assert (await client.get(f"{TASKS}/{task['id']}")).json() == task


async def test_oversized_body_is_refused_by_content_length_before_reading(client, engine):
    sent: list[int] = []

    async def body():
        for index in range(100):
            sent.append(index)
            yield b"x" * 1024

    # Content-Length says 100 KiB: refused without reading a byte.
    response = await client.post(TASKS, content=body(), headers={**JSON, "content-length": str(100 * 1024)})
    assert response.status_code == 413
    assert sent == []
    assert await row_count(engine) == 0


@pytest.mark.parametrize("length", [b"\xb2", b"\xb9\xb2"], ids=["superscript two", "superscript one two"])
async def test_a_content_length_of_non_ascii_digits_is_not_a_number(client, length):
    """str.isdigit() is true for the latin-1 superscripts, int() is not: the body is counted as it streams."""
    response = await client.post(TASKS, content=b'{"title": "t"}', headers={**JSON, "content-length": length})
    assert response.status_code == 201, response.text


async def test_oversized_streamed_body_is_refused_while_streaming(client, engine):
    sent: list[int] = []

    async def body():
        for index in range(1000):
            sent.append(index)
            yield b"x" * 1024

    # No Content-Length (chunked): counted as it arrives, abandoned just past 64 KiB, not read to the end.
    response = await client.post(TASKS, content=body(), headers=JSON)
    assert response.status_code == 413
    assert 64 <= len(sent) <= 66
    assert await row_count(engine) == 0


async def test_body_exactly_at_the_limit_is_accepted(client):
    head, tail = b'{"title": "t"', b"}"
    raw = head + b" " * (64 * 1024 - len(head) - len(tail)) + tail  # JSON allows any amount of whitespace
    assert len(raw) == 64 * 1024
    response = await client.post(TASKS, content=raw, headers=JSON)
    assert response.status_code == 201, response.text


# --- read, replace, patch, toggle, delete -----------------------------------------------------------------


async def test_get_returns_the_task_with_etag(client):
    task = await create(client, description="d", due_date="2026-01-31")
    response = await client.get(f"{TASKS}/{task['id']}")
    assert response.status_code == 200
    assert response.json() == task
    assert response.headers["etag"] == '"1"'


async def test_head_returns_headers_without_a_body(client):
    task = await create(client)
    response = await client.request("HEAD", f"{TASKS}/{task['id']}")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["etag"] == '"1"'


async def test_put_replaces_every_writable_field(client, clock: FakeClock):
    task = await create(client, description="old", due_date="2026-01-31", completed=True)
    clock.advance(5)

    response = await client.put(f"{TASKS}/{task['id']}", json={"title": "  new title "})

    assert response.status_code == 200, response.text
    replaced = response.json()
    assert replaced == {
        **task,
        "title": "new title",
        "description": None,
        "due_date": None,
        "completed": False,
        "updated_at": "2025-10-09T08:53:25.000Z",
        "version": 2,
    }
    assert response.headers["etag"] == '"2"'
    assert (await client.get(f"{TASKS}/{task['id']}")).json() == replaced


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"title": "renamed"}, id="title"),
        pytest.param({"description": "now described"}, id="description"),
        pytest.param({"description": None}, id="description cleared"),
        pytest.param({"due_date": "2030-06-01"}, id="due date"),
        pytest.param({"due_date": None}, id="due date cleared"),
        pytest.param({"completed": True}, id="completed"),
        pytest.param({"title": "both", "completed": True}, id="two fields"),
    ],
)
async def test_patch_changes_only_the_named_fields(client, clock, change):
    task = await create(client, description="keep me", due_date="2026-01-31")
    clock.advance(1.5)

    response = await client.patch(f"{TASKS}/{task['id']}", json=change)

    assert response.status_code == 200, response.text
    assert response.json() == {**task, **change, "updated_at": "2025-10-09T08:53:21.500Z", "version": 2}
    assert response.headers["etag"] == '"2"'


async def test_toggle_flips_completion_each_time(client):
    task = await create(client)
    url = f"{TASKS}/{task['id']}/complete"

    first = await client.patch(url)
    second = await client.patch(url)
    third = await client.patch(url, json={"completed": False})  # a body is ignored: the toggle has none

    assert [r.status_code for r in (first, second, third)] == [200, 200, 200]
    assert [r.json()["completed"] for r in (first, second, third)] == [True, False, True]
    assert [r.headers["etag"] for r in (first, second, third)] == ['"2"', '"3"', '"4"']


async def test_delete_removes_the_task(client, engine):
    task = await create(client)
    other = await create(client)

    response = await client.delete(f"{TASKS}/{task['id']}")

    assert response.status_code == 204
    assert response.content == b""
    assert (await client.get(f"{TASKS}/{task['id']}")).status_code == 404
    assert (await client.delete(f"{TASKS}/{task['id']}")).status_code == 404
    assert (await client.get(f"{TASKS}/{other['id']}")).status_code == 200
    assert await row_count(engine) == 1


# --- 404: unknown tasks and other users' tasks look the same ----------------------------------------------

TASK_REQUESTS = [
    pytest.param("GET", "", None, id="get"),
    pytest.param("PUT", "", {"title": "mine now"}, id="put"),
    pytest.param("PATCH", "", {"title": "mine now"}, id="patch"),
    pytest.param("DELETE", "", None, id="delete"),
    pytest.param("PATCH", "/complete", None, id="toggle"),
]


@pytest.mark.parametrize(("method", "suffix", "body"), TASK_REQUESTS)
@pytest.mark.parametrize("whose", ["unknown", "bob's"])
async def test_unknown_and_other_users_tasks_are_404(client, method, suffix, body, whose):
    bobs = await client.post("/api/bob/tasks", json={"title": "bob's secret"}, as_user="bob")
    assert bobs.status_code == 201
    task_id = bobs.json()["id"] if whose == "bob's" else "0" * 32
    kwargs = {"json": body} if body is not None else {}

    response = await client.request(method, f"{TASKS}/{task_id}{suffix}", **kwargs)

    assert response.status_code == 404, response.text
    assert response.json() == {"error": "not_found", "message": "no such task"}
    unchanged = await client.get(f"/api/bob/tasks/{bobs.json()['id']}", as_user="bob")
    assert unchanged.json() == bobs.json()


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_if_match_on_another_users_task_is_404_not_412(client, method):
    bobs = (await client.post("/api/bob/tasks", json={"title": "b"}, as_user="bob")).json()
    kwargs = {"json": {"title": "x"}} if method == "PATCH" else {}
    response = await client.request(method, f"{TASKS}/{bobs['id']}", headers={"if-match": '"9"'}, **kwargs)
    assert response.status_code == 404


# --- optimistic concurrency: If-Match -> 412 --------------------------------------------------------------

WRITES = [
    pytest.param("PUT", "", {"title": "changed"}, id="put"),
    pytest.param("PATCH", "", {"title": "changed"}, id="patch"),
    pytest.param("PATCH", "/complete", None, id="toggle"),
    pytest.param("DELETE", "", None, id="delete"),
]


@pytest.mark.parametrize(("method", "suffix", "body"), WRITES)
@pytest.mark.parametrize(
    ("if_match", "applies"),
    [
        pytest.param('"2"', True, id="current version"),
        pytest.param('"1", "2"', True, id="list containing the current version"),
        pytest.param("*", True, id="any version"),
        pytest.param('"1"', False, id="stale version"),
        pytest.param('"3"', False, id="future version"),
        pytest.param('W/"2"', False, id="weak tag never matches"),
        pytest.param("2", False, id="unquoted"),
        pytest.param('"abc"', False, id="not one of ours"),
        pytest.param(b'"\xb2"', False, id="latin-1 superscript two (str.isdigit, not int)"),
        pytest.param(b'"\xb9", "2"', True, id="superscript one, then the current version"),
    ],
)
async def test_if_match(client, method, suffix, body, if_match, applies):
    task = await create(client)
    url = f"{TASKS}/{task['id']}"
    current = (await client.patch(url, json={"description": "v2"})).json()
    assert current["version"] == 2
    kwargs = {"json": body} if body is not None else {}

    response = await client.request(method, url + suffix, headers={"if-match": if_match}, **kwargs)

    if applies:
        assert response.status_code in (200, 204), response.text
    else:
        assert response.status_code == 412, response.text
        assert response.json()["error"] == "precondition_failed"
        assert response.headers["etag"] == '"2"'
        assert (await client.get(url)).json() == current


# --- routing: unknown route 404, wrong method 405, both JSON ----------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/nowhere", id="top level"),
        pytest.param("/api/alice", id="user without resource"),
        pytest.param("/api/alice/notes", id="unknown resource"),
        pytest.param("/api/alice/tasks/", id="trailing slash is not redirected"),
        pytest.param("/api/alice/tasks/x/y", id="too deep"),
    ],
)
async def test_unknown_routes_are_404_json(client, path):
    response = await client.get(path)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        pytest.param("DELETE", TASKS, "GET, POST, HEAD", id="delete the collection"),
        pytest.param("POST", TASKS + "/" + "0" * 32, "GET, PUT, PATCH, DELETE, HEAD", id="post to a task"),
        pytest.param("GET", TASKS + "/" + "0" * 32 + "/complete", "PATCH", id="get the toggle"),
        pytest.param("POST", "/livez", "GET, HEAD", id="post to livez"),
    ],
)
async def test_wrong_method_is_405_json_with_allow(client, method, path, allow):
    response = await client.request(method, path)
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
    assert set(response.headers["allow"].split(", ")) == set(allow.split(", "))


# --- health -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/livez", "/readyz"])
async def test_health_needs_no_proof(app, path):
    import httpx

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as plain:
        response = await plain.get(path)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_list_response_is_json_with_items_and_cursor(client):
    await create(client)
    response = await client.get(TASKS)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = json.loads(response.content)
    assert set(body) == {"items", "next_cursor"}


# --- access log -------------------------------------------------------------------------------------------


async def test_one_json_access_line_per_request(client, caplog):
    caplog.set_level(logging.INFO, logger="tasks_backend.access")

    created = await client.post(TASKS, json={"title": "logged"}, headers={"x-secret-header": "hunter2"})
    refused = await client.http.get(TASKS + "?cursor=abc")  # no proof: ProofMiddleware's 401 is logged too

    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tasks_backend.access"]
    assert [(line["method"], line["path"], line["status"], line["user"]) for line in lines] == [
        ("POST", TASKS, 201, "alice"),
        ("GET", TASKS, 401, None),
    ]
    assert lines[0]["request_id"] == created.request.headers["x-request-id"]
    assert lines[0]["ts"].endswith("Z")
    assert refused.status_code == 401
    assert "hunter2" not in caplog.text
    assert "logged" not in caplog.text
