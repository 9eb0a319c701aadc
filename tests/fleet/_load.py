"""A bounded load client for the fleet test: mixed requests at a fixed rate through HAProxy, each result recorded
with its start and end (``time.monotonic()``), so the test can say which requests failed in which phase.

It runs in a thread of its own (:class:`LoadThread`) with its own event loop, while the test's main thread stops
and starts processes. Bounded: at most ``max_in_flight`` requests at once (a tick that finds them all busy is
counted in ``skipped``, never queued), a timeout on every request, and it stops when told.

The mix, per user (several users, each with a session token and a JWT): list tasks, create a task, rename one of
its tasks, fetch a fresh JWT (``/api/auth/token``, so tokens signed by a rotated key reach the load) and read the
session (``/api/auth/get-session``, which any identity replica answers from the shared database). Every
acknowledged write is remembered, so the test can check the database kept it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import threading
import time
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx
import jwt

#: (kind, weight)
MIX = (("list", 30), ("create", 25), ("rename", 20), ("token", 15), ("session", 10))
#: The address the load connects from: unlike 127.0.0.1 (the gateways' own address) it shows in identity's
#: session records only if the whole X-Forwarded-For chain through HAProxy and a gateway was believed.
CLIENT_ADDRESS = "127.0.0.3"


def no_cookies() -> CookieJar:
    """A jar that stores nothing: one shared client must not replay one user's cookies for another."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


@dataclass(frozen=True)
class Result:
    kind: str
    start: float
    end: float
    status: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class TaskRecord:
    id: str
    title: str  # the title of the create or of the last acknowledged rename
    unacknowledged: list[str] = field(default_factory=list)  # titles sent after it whose outcome is unknown
    busy: bool = False  # renames of one task never overlap, so "the last acknowledged" is well defined


@dataclass
class LoadUser:
    email: str
    user_id: str
    session: str
    jwt: str
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)  # titles of acknowledged creates


class LoadClient:
    def __init__(
        self,
        base_url: str,
        users: list[LoadUser],
        *,
        rate: float = 60.0,
        max_in_flight: int = 32,
        timeout: float = 10.0,
        seed: int = 9,
    ) -> None:
        self.base_url = base_url
        self.users = users
        self.rate = rate
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.random = random.Random(seed)
        self.results: list[Result] = []
        self.skipped = 0
        self.kids: collections.Counter[str] = collections.Counter()  # kid of every JWT /api/auth/token returned
        self._serial = 0
        self._kinds = [kind for kind, _ in MIX]
        self._weights = [weight for _, weight in MIX]

    async def run(self, stop: asyncio.Event) -> None:
        transport = httpx.AsyncHTTPTransport(local_address=CLIENT_ADDRESS, retries=0)
        limits = httpx.Limits(max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight)
        async with httpx.AsyncClient(
            base_url=self.base_url,
            transport=transport,
            limits=limits,
            timeout=self.timeout,
            trust_env=False,
            cookies=no_cookies(),
        ) as client:
            loop = asyncio.get_running_loop()
            in_flight: set[asyncio.Task[None]] = set()
            interval = 1.0 / self.rate
            due = loop.time()
            while not stop.is_set():
                if len(in_flight) < self.max_in_flight:
                    task = asyncio.create_task(self._one(client))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                else:
                    self.skipped += 1
                due = max(due + interval, loop.time() - 1.0)  # a stalled loop does not fire a burst afterwards
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, due - loop.time()))
            if in_flight:
                await asyncio.wait(in_flight, timeout=self.timeout + 5)

    async def _one(self, client: httpx.AsyncClient) -> None:
        self._serial += 1
        serial = self._serial
        user = self.random.choice(self.users)
        kind = self.random.choices(self._kinds, self._weights)[0]
        idle = [t for t in user.tasks.values() if not t.busy]
        if kind == "rename" and not idle:
            kind = "list"
        bearer = {"Authorization": f"Bearer {user.jwt}"}
        session = {"Authorization": f"Bearer {user.session}"}
        start = time.monotonic()
        status: int | None = None
        error: str | None = None
        record: TaskRecord | None = None
        title = ""
        try:
            if kind == "list":
                response = await client.get(f"/api/{user.user_id}/tasks", params={"limit": "10"}, headers=bearer)
                error = _expect(response, 200)
            elif kind == "create":
                title = f"{user.email.split('@')[0]}-{serial}"
                response = await client.post(f"/api/{user.user_id}/tasks", json={"title": title}, headers=bearer)
                error = _expect(response, 201)
                if error is None:
                    task_id = response.json()["id"]
                    user.tasks[task_id] = TaskRecord(task_id, title)
                    user.created.append(title)
            elif kind == "rename":
                record = self.random.choice(idle)
                record.busy = True
                title = f"{record.id[:8]}-renamed-{serial}"
                response = await client.patch(
                    f"/api/{user.user_id}/tasks/{record.id}", json={"title": title}, headers=bearer
                )
                error = _expect(response, 200)
            elif kind == "token":
                response = await client.get("/api/auth/token", headers=session)
                error = _expect(response, 200)
                if error is None:
                    user.jwt = response.json()["token"]
                    self.kids[jwt.get_unverified_header(user.jwt)["kid"]] += 1
            else:
                response = await client.get("/api/auth/get-session", headers=session)
                error = _expect(response, 200)
                if error is None and (response.json() or {}).get("user", {}).get("id") != user.user_id:
                    error = f"get-session answered {response.text[:200]}"
            status = response.status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            if record is not None:
                if error is None:
                    record.title, record.unacknowledged = title, []
                else:
                    record.unacknowledged.append(title)
                record.busy = False
        self.results.append(Result(kind, start, time.monotonic(), status, error))


def _expect(response: httpx.Response, status: int) -> str | None:
    if response.status_code == status:
        return None
    return f"HTTP {response.status_code}: {response.text[:200]}"


class LoadThread:
    """Runs a :class:`LoadClient` on an event loop in a thread of its own until :meth:`stop`."""

    def __init__(self, client: LoadClient) -> None:
        self.client = client
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="fleet-load", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the load thread did not start")

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by stop(); an exception escaping a thread is lost otherwise
            self.error = exc
        finally:
            self._ready.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self.client.run(self._stop)

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("the load thread did not stop")
        if self.error is not None:
            raise RuntimeError("the load client failed") from self.error
