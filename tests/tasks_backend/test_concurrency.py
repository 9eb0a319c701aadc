"""Simultaneous writes to one task: none is lost, and a stale If-Match loses cleanly (412).

The requests run concurrently on one event loop over the engine's connection pool, so their statements
interleave in the database; a read-modify-write implementation would lose updates here.
"""

from __future__ import annotations

import anyio
import httpx
import pytest

from tests.tasks_backend.proofs import GatewayClient

pytestmark = pytest.mark.anyio

TASKS = "/api/alice/tasks"


async def run_together(*requests) -> list[httpx.Response]:
    responses: list[httpx.Response | None] = [None] * len(requests)

    async def run(index: int, request) -> None:
        responses[index] = await request()

    async with anyio.create_task_group() as group:
        for index, request in enumerate(requests):
            group.start_soon(run, index, request)
    return [r for r in responses if r is not None]


async def test_simultaneous_patches_and_toggles_all_land(client: GatewayClient):
    task = (await client.post(TASKS, json={"title": "original"})).json()
    url = f"{TASKS}/{task['id']}"
    toggles = 13  # odd: the task ends completed

    responses = await run_together(
        lambda: client.patch(url, json={"title": "new title"}),
        lambda: client.patch(url, json={"description": "new description"}),
        lambda: client.patch(url, json={"due_date": "2030-01-01"}),
        *[lambda: client.patch(url + "/complete") for _ in range(toggles)],
    )

    assert [r.status_code for r in responses] == [200] * (3 + toggles), [r.text for r in responses]
    final = (await client.get(url)).json()
    assert final["title"] == "new title"
    assert final["description"] == "new description"
    assert final["due_date"] == "2030-01-01"
    assert final["completed"] is True
    assert final["version"] == 1 + 3 + toggles
    # Every write saw a distinct version: each was applied to the result of the one before.
    assert sorted(r.json()["version"] for r in responses) == list(range(2, 2 + 3 + toggles))


async def test_only_one_of_several_writers_with_the_same_if_match_wins(client: GatewayClient):
    task = (await client.post(TASKS, json={"title": "original"})).json()
    url = f"{TASKS}/{task['id']}"
    writers = 8

    responses = await run_together(
        *[
            (lambda n=n: client.patch(url, json={"title": f"writer {n}"}, headers={"if-match": '"1"'}))
            for n in range(writers)
        ]
    )

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [412] * (writers - 1), [r.text for r in responses]
    winner = next(r for r in responses if r.status_code == 200).json()
    final = (await client.get(url)).json()
    assert final["title"] == winner["title"]
    assert final["version"] == 2
    assert all(r.headers["etag"] == '"2"' for r in responses if r.status_code == 412)


async def test_a_stale_if_match_after_another_write_is_412(client: GatewayClient):
    task = (await client.post(TASKS, json={"title": "original"})).json()
    url = f"{TASKS}/{task['id']}"
    etag = (await client.get(url)).headers["etag"]
    assert (await client.patch(url, json={"description": "someone else"})).status_code == 200

    stale = await client.put(url, json={"title": "mine"}, headers={"if-match": etag})

    assert stale.status_code == 412
    assert (await client.get(url)).json()["description"] == "someone else"


async def test_simultaneous_deletes_delete_once(client: GatewayClient):
    task = (await client.post(TASKS, json={"title": "doomed"})).json()
    url = f"{TASKS}/{task['id']}"

    responses = await run_together(*[lambda: client.delete(url) for _ in range(6)])

    assert sorted(r.status_code for r in responses) == [204] + [404] * 5
