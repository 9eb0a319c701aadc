"""The list endpoint: status filter, every sort in both directions, keyset pages that stay stable under
inserts and deletes, and a 422 naming each bad query parameter."""

from __future__ import annotations

import pytest

from tasks_backend.app import create_app
from tasks_backend.config import load_config
from tests.tasks_backend.proofs import SECRET, GatewayClient
from tests.tasks_backend.test_parsing import forged

pytestmark = pytest.mark.anyio

TASKS = "/api/alice/tasks"

# title, due_date, completed -- created in this order, one second apart. Lower-case titles: the title order
# is the database's collation, and these sort the same under every collation.
SPECS = [
    ("banana", "2026-03-01", False),
    ("apple", None, True),
    ("cherry", "2026-01-15", False),
    ("fig", "2026-03-01", True),
    ("date", None, False),
    ("elderberry", "2025-12-31", True),
]


@pytest.fixture
async def seeded(client: GatewayClient) -> dict[str, str]:
    """Alice's six tasks (title -> id), and one of Bob's that must never show up."""
    ids = {}
    for title, due, completed in SPECS:
        response = await client.post(TASKS, json={"title": title, "due_date": due, "completed": completed})
        assert response.status_code == 201
        ids[title] = response.json()["id"]
        client.clock.advance(1)
    bob = await client.post("/api/bob/tasks", json={"title": "apple"}, as_user="bob")
    assert bob.status_code == 201
    return ids


async def titles(client: GatewayClient, query: str = "") -> list[str]:
    response = await client.get(TASKS + query)
    assert response.status_code == 200, response.text
    assert response.json()["next_cursor"] is None
    return [task["title"] for task in response.json()["items"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param(
            "", ["banana", "apple", "cherry", "fig", "date", "elderberry"], id="default: created, oldest first"
        ),
        pytest.param("?sort=created", ["banana", "apple", "cherry", "fig", "date", "elderberry"], id="created"),
        pytest.param("?sort=-created", ["elderberry", "date", "fig", "cherry", "apple", "banana"], id="-created"),
        pytest.param("?sort=title", ["apple", "banana", "cherry", "date", "elderberry", "fig"], id="title"),
        pytest.param("?sort=-title", ["fig", "elderberry", "date", "cherry", "banana", "apple"], id="-title"),
        # Undated tasks come after every dated one; ties are broken by id, so compare those as sets below.
        pytest.param("?sort=due", ["elderberry", "cherry", {"banana", "fig"}, {"apple", "date"}], id="due"),
        pytest.param("?sort=-due", [{"apple", "date"}, {"banana", "fig"}, "cherry", "elderberry"], id="-due"),
        pytest.param("?status=all", ["banana", "apple", "cherry", "fig", "date", "elderberry"], id="status all"),
        pytest.param("?status=pending", ["banana", "cherry", "date"], id="pending"),
        pytest.param("?status=completed", ["apple", "fig", "elderberry"], id="completed"),
        pytest.param("?status=completed&sort=-title", ["fig", "elderberry", "apple"], id="completed by -title"),
        pytest.param("?status=pending&sort=due", ["cherry", "banana", "date"], id="pending by due"),
        pytest.param("?status=pending&limit=10&unknown=1", ["banana", "cherry", "date"], id="unknown params ignored"),
    ],
)
async def test_filters_and_sorts(client, seeded, query, expected):
    got = await titles(client, query)
    grouped: list[object] = []
    for item in expected:
        size = len(item) if isinstance(item, set) else 1
        chunk, got = got[:size], got[size:]
        grouped.append(set(chunk) if isinstance(item, set) else chunk[0])
    assert grouped == expected
    assert got == []


@pytest.mark.parametrize("sort", ["created", "-created", "title", "-title", "due", "-due"])
@pytest.mark.parametrize("status", ["all", "pending", "completed"])
@pytest.mark.parametrize("limit", [1, 2, 4])
async def test_pages_concatenate_to_the_unpaged_list(client, seeded, sort, status, limit):
    whole = (await client.get(TASKS, params={"sort": sort, "status": status})).json()["items"]
    pages, cursor = [], None
    for _ in range(10):  # bounded: a cursor that never ends is a failure, not a hang
        params = {"sort": sort, "status": status, "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        body = (await client.get(TASKS, params=params)).json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    else:
        pytest.fail(f"more than 10 pages of {limit} for 6 tasks: {pages}")
    assert all(len(page) == limit for page in pages[:-1])
    assert 1 <= len(pages[-1]) <= limit or whole == []
    assert [task for page in pages for task in page] == whole


@pytest.mark.parametrize(
    ("sort", "inserted", "expected_rest"),
    [
        # Page 1 of created/limit=2 shows banana, apple. New tasks are newest: they follow at the end.
        pytest.param(
            "created", ["zucchini", "avocado"], ["cherry", "fig", "date", "elderberry", "zucchini", "avocado"]
        ),
        # Newest first: page 1 shows elderberry, date; newer tasks belong before the cursor and never appear.
        pytest.param("-created", ["zucchini", "avocado"], ["fig", "cherry", "apple", "banana"]),
        # Page 1 of title shows apple, banana: "avocado" sorts before the cursor (not shown), "zucchini" after.
        pytest.param("title", ["zucchini", "avocado"], ["cherry", "date", "elderberry", "fig", "zucchini"]),
    ],
)
async def test_pages_are_stable_under_inserts(client, seeded, sort, inserted, expected_rest):
    first = (await client.get(TASKS, params={"sort": sort, "limit": "2"})).json()
    for title in inserted:
        client.clock.advance(1)
        assert (await client.post(TASKS, json={"title": title})).status_code == 201

    rest, cursor = [], first["next_cursor"]
    for _ in range(10):
        if cursor is None:
            break
        body = (await client.get(TASKS, params={"sort": sort, "limit": "2", "cursor": cursor})).json()
        rest += [task["title"] for task in body["items"]]
        cursor = body["next_cursor"]

    assert rest == expected_rest
    shown = [task["title"] for task in first["items"]] + rest
    assert len(shown) == len(set(shown))


async def test_deleting_the_cursor_task_does_not_break_the_next_page(client, seeded):
    first = (await client.get(TASKS, params={"limit": "2"})).json()
    assert [t["title"] for t in first["items"]] == ["banana", "apple"]
    assert (await client.delete(f"{TASKS}/{seeded['apple']}")).status_code == 204

    second = (await client.get(TASKS, params={"limit": "2", "cursor": first["next_cursor"]})).json()

    assert [t["title"] for t in second["items"]] == ["cherry", "fig"]


async def test_completion_changes_between_pages_never_repeat_a_task(client, seeded):
    first = (await client.get(TASKS, params={"status": "pending", "limit": "1"})).json()
    assert [t["title"] for t in first["items"]] == ["banana"]
    # banana completed and cherry pending->completed: the rest of the pending list is only "date".
    await client.patch(f"{TASKS}/{seeded['cherry']}/complete")
    second = await client.get(TASKS, params={"status": "pending", "limit": "5", "cursor": first["next_cursor"]})
    assert [t["title"] for t in second.json()["items"]] == ["date"]


async def test_an_empty_list(client):
    response = await client.get(TASKS)
    assert response.json() == {"items": [], "next_cursor": None}


async def test_default_and_maximum_page_size(database_url, engine, clock):
    config = load_config(
        {"TASKS_DATABASE_URL": database_url, "EDGE_PROOF_SECRET": SECRET.decode(), "TASKS_MAX_PAGE_SIZE": "3"}
    )
    client = GatewayClient(create_app(config, engine=engine, clock=clock), clock)
    try:
        for index in range(4):
            await client.post(TASKS, json={"title": f"t{index}"})
        default = (await client.get(TASKS)).json()
        assert len(default["items"]) == 3  # the default page is min(50, TASKS_MAX_PAGE_SIZE)
        assert default["next_cursor"] is not None
        assert (await client.get(TASKS, params={"limit": "3"})).status_code == 200
        too_big = await client.get(TASKS, params={"limit": "4"})
        assert too_big.status_code == 422
        assert too_big.json()["fields"] == {"limit": "must be an integer from 1 to 3"}
    finally:
        await client.aclose()


async def test_default_page_is_fifty(client):
    for index in range(51):
        await client.post(TASKS, json={"title": f"task {index}"})
    body = (await client.get(TASKS)).json()
    assert len(body["items"]) == 50
    rest = (await client.get(TASKS, params={"cursor": body["next_cursor"]})).json()
    assert len(rest["items"]) == 1
    assert rest["next_cursor"] is None


async def cursor_for(client: GatewayClient, sort: str) -> str:
    cursor = (await client.get(TASKS, params={"sort": sort, "limit": "1"})).json()["next_cursor"]
    assert cursor
    return cursor


@pytest.mark.parametrize(
    ("params", "bad_fields"),
    [
        pytest.param({"status": "done"}, {"status"}, id="unknown status"),
        pytest.param({"status": ""}, set(), id="empty status is the default"),
        pytest.param({"sort": "priority"}, {"sort"}, id="unknown sort"),
        pytest.param({"sort": "--title"}, {"sort"}, id="double minus"),
        pytest.param({"sort": "+title"}, {"sort"}, id="plus prefix"),
        pytest.param({"limit": "0"}, {"limit"}, id="limit 0"),
        pytest.param({"limit": "101"}, {"limit"}, id="limit over the maximum"),
        pytest.param({"limit": "-1"}, {"limit"}, id="negative limit"),
        pytest.param({"limit": "ten"}, {"limit"}, id="limit not a number"),
        pytest.param({"limit": "100"}, set(), id="limit at the maximum"),
        # str.isdigit() is true for all three; int() fails on the first and reads the others as 3 and 2.
        pytest.param({"limit": "\u00b2"}, {"limit"}, id="limit superscript two"),
        pytest.param({"limit": "\u0663"}, {"limit"}, id="limit arabic-indic three"),
        pytest.param({"limit": "\uff12"}, {"limit"}, id="limit fullwidth two"),
        pytest.param({"sort": "title", "cursor": forged(s="title", v="\ud800", i="x")}, {"cursor"}, id="surrogate"),
        pytest.param({"sort": "title", "cursor": forged(s="title", v="a\x00", i="x")}, {"cursor"}, id="NUL in title"),
        pytest.param(
            {"cursor": forged(s="created", v="2025-01-01T00:00:00Z", i="\udfff")}, {"cursor"}, id="id surrogate"
        ),
        pytest.param({"cursor": forged(s="created", v="2025-01-01T00:00:00Z", i="x\x00")}, {"cursor"}, id="NUL in id"),
        pytest.param(
            {"cursor": forged(s="created", v="0001-01-01T00:00:00+23:59", i="x")}, {"cursor"}, id="time before year 1"
        ),
        pytest.param(
            {"cursor": forged(s="created", v="9999-12-31T23:59:59-23:59", i="x")}, {"cursor"}, id="time after 9999"
        ),
        pytest.param(
            {"sort": "due", "cursor": forged(s="due", v="9999-12-31", i="x")}, {"cursor"}, id="due 9999-12-31"
        ),
        pytest.param({"cursor": "not-a-cursor"}, {"cursor"}, id="garbage cursor"),
        pytest.param({"cursor": "eyJzIjoiY3JlYXRlZCJ9"}, {"cursor"}, id="cursor missing fields"),
        pytest.param({"cursor": "W10"}, {"cursor"}, id="cursor of a JSON list"),
        pytest.param(
            {"cursor": "eyJzIjoiY3JlYXRlZCIsInYiOiJ5ZXN0ZXJkYXkiLCJpIjoieCJ9"}, {"cursor"}, id="cursor with a bad time"
        ),
        pytest.param({"status": "x", "sort": "y", "limit": "z"}, {"status", "sort", "limit"}, id="all named at once"),
    ],
)
async def test_bad_query_parameters_are_422(client, seeded, params, bad_fields):
    response = await client.get(TASKS, params=params)
    if not bad_fields:
        assert response.status_code == 200
        return
    assert response.status_code == 422, response.text
    assert set(response.json()["fields"]) == bad_fields


async def test_a_cursor_belongs_to_its_sort(client, seeded):
    cursor = await cursor_for(client, "title")
    response = await client.get(TASKS, params={"sort": "-title", "cursor": cursor})
    assert response.status_code == 422
    assert response.json()["fields"] == {"cursor": "was issued for sort=title, not sort=-title"}


async def test_a_cursor_keeps_working_with_another_status(client, seeded):
    cursor = await cursor_for(client, "due")
    response = await client.get(TASKS, params={"sort": "due", "status": "completed", "cursor": cursor})
    assert response.status_code == 200


async def test_repeated_parameters_are_422(client, seeded):
    response = await client.get(TASKS + "?status=pending&status=completed")
    assert response.status_code == 422
    assert response.json()["fields"] == {"status": "must be given at most once"}


async def test_another_users_tasks_are_never_listed(client, seeded):
    for sort in ("created", "title", "due"):
        items = (await client.get(TASKS, params={"sort": sort})).json()["items"]
        assert {task["user_id"] for task in items} == {"alice"}
    bobs = (await client.get("/api/bob/tasks", as_user="bob")).json()["items"]
    assert [(t["title"], t["user_id"]) for t in bobs] == [("apple", "bob")]
