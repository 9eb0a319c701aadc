"""The tasks API, mounted under ``/api/{user_id}`` behind :class:`tasks_backend.trust.RequireOwner`.

GET    /tasks                  list: ?status= ?sort= ?limit= ?cursor=  -> 200 {"items", "next_cursor"}
POST   /tasks                  create                                  -> 201, Location, ETag
GET    /tasks/{id}             read                                    -> 200, ETag
PUT    /tasks/{id}             replace the writable fields             -> 200, ETag  (If-Match -> 412)
PATCH  /tasks/{id}             change the named fields                 -> 200, ETag  (If-Match -> 412)
DELETE /tasks/{id}             delete                                  -> 204        (If-Match -> 412)
PATCH  /tasks/{id}/complete    toggle ``completed`` (no body)          -> 200, ETag  (If-Match -> 412)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.proof import identity_of
from tasks_backend.body import read_json
from tasks_backend.config import Config
from tasks_backend.models import Task
from tasks_backend.pagination import list_query, page_body
from tasks_backend.preconditions import parse_if_match
from tasks_backend.store import TaskStore
from tasks_backend.validation import Mode, task_fields


def _user(request: Request) -> str:
    # RequireOwner has checked that the proven user exists and is the one the path names.
    user_id = identity_of(request).user_id
    assert user_id is not None
    return user_id


def _task_response(task: Task, status_code: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(task.to_json(), status_code=status_code, headers={"etag": task.etag, **(headers or {})})


Endpoint = Callable[[Request], Awaitable[Response]]


def _resource(path: str, **handlers: Endpoint) -> Route:
    """One route per path, so a wrong method gets 405 with an ``Allow`` listing every method the path has."""

    async def dispatch(request: Request) -> Response:
        return await handlers["GET" if request.method == "HEAD" else request.method](request)

    return Route(path, dispatch, methods=list(handlers))


class TaskEndpoints:
    def __init__(self, store: TaskStore, config: Config) -> None:
        self.store = store
        self.config = config

    def routes(self) -> list[BaseRoute]:
        return [
            _resource("/tasks", GET=self.list_tasks, POST=self.create_task),
            _resource(
                "/tasks/{task_id}",
                GET=self.get_task,
                PUT=self.replace_task,
                PATCH=self.patch_task,
                DELETE=self.delete_task,
            ),
            _resource("/tasks/{task_id}/complete", PATCH=self.toggle_task),
        ]

    async def _fields(self, request: Request, mode: Mode) -> dict[str, object]:
        return task_fields(await read_json(request, self.config.max_body_bytes), mode)

    async def list_tasks(self, request: Request) -> Response:
        query = list_query(
            request.query_params,
            default_limit=self.config.default_page_size,
            max_limit=self.config.max_page_size,
        )
        return JSONResponse(page_body(await self.store.page(_user(request), query), query))

    async def create_task(self, request: Request) -> Response:
        user_id = _user(request)
        task = await self.store.create(user_id, await self._fields(request, "create"))
        # A relative reference is a valid Location (RFC 9110 10.2.2) and survives the gateway unchanged.
        location = f"/api/{quote(user_id, safe='')}/tasks/{task.id}"
        return _task_response(task, 201, {"location": location})

    async def get_task(self, request: Request) -> Response:
        return _task_response(await self.store.get(_user(request), request.path_params["task_id"]))

    async def _update(self, request: Request, fields: dict[str, object], *, toggle: bool = False) -> Response:
        task = await self.store.update(
            _user(request),
            request.path_params["task_id"],
            fields,
            if_match=parse_if_match(request.headers.getlist("if-match")),
            toggle=toggle,
        )
        return _task_response(task)

    async def replace_task(self, request: Request) -> Response:
        return await self._update(request, await self._fields(request, "replace"))

    async def patch_task(self, request: Request) -> Response:
        return await self._update(request, await self._fields(request, "patch"))

    async def toggle_task(self, request: Request) -> Response:
        return await self._update(request, {}, toggle=True)

    async def delete_task(self, request: Request) -> Response:
        if_match = parse_if_match(request.headers.getlist("if-match"))
        await self.store.delete(_user(request), request.path_params["task_id"], if_match=if_match)
        return Response(status_code=204)
