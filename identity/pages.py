"""The web pages (issue 6): sign-up, log-in and the tasks page.

Identity serves them so that the pages, ``/api/auth`` and the session cookie share one origin behind the
gateway: the pages call identity and the tasks API with same-origin ``fetch`` and need no CORS at all.

The HTML, CSS and JavaScript under ``static/`` are read once, when the routes are built, and served from
memory: no template engine and no build step. No page has inline script, so the Content-Security-Policy
can forbid it (issue 6: "Pages send a Content-Security-Policy that forbids inline script").
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

STATIC_DIR = Path(__file__).with_name("static")

#: Only same-origin files may run or style the page: no inline script or style, no plugins, no <base>
#: rewriting, no framing (clickjacking), and forms may post only to this origin (CSP Level 3).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)

#: Sent with every response of these routes, redirects and 404s included.
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

#: Pages depend on the session cookie (a signed-in visitor of /login is sent on to /tasks), and /tasks
#: must not come back from the cache after logging out (issue 6: "the back button does not show the
#: tasks"), so no page is stored anywhere.
PAGE_CACHE_CONTROL = "no-store"

#: Pages link assets with a content hash (``/assets/app.css?v=1a2b3c4d``), so a deploy is picked up on the
#: next page load; the hour only bounds how long someone typing the bare URL may see an old copy.
ASSET_CACHE_CONTROL = "public, max-age=3600"

#: Every file under static/assets must have one of these types: an unknown one fails at start-up rather
#: than being served with a guessed type (nosniff makes browsers believe the header).
MEDIA_TYPES: Mapping[str, str] = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}

_ASSET_LINK = re.compile(r'(?P<attr>href|src)="/assets/(?P<name>[^"?#]+)"')


class SessionCheck(Protocol):
    """identity's hook on ``app.state.current_session``: the request's live session, or None."""

    def __call__(self, request: Request, /) -> Awaitable[object | None]: ...


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets(directory: Path) -> dict[str, Asset]:
    assets = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        media_type = MEDIA_TYPES.get(path.suffix)
        if media_type is None:
            raise ValueError(f"{path}: no media type for {path.suffix!r} files")
        body = path.read_bytes()
        assets[path.name] = Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:16] + '"')
    return assets


def pin_assets(html: str, assets: Mapping[str, Asset]) -> str:
    """Add each linked asset's hash to its URL; a link to a missing asset fails at start-up."""

    def pin(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in assets:
            raise ValueError(f"page links /assets/{name}, which does not exist")
        return f'{match["attr"]}="/assets/{name}?v={assets[name].etag[1:9]}"'

    return _ASSET_LINK.sub(pin, html)


def _not_modified(request: Request, etag: str) -> bool:
    # RFC 9110 13.1.2: If-None-Match uses the weak comparison, and "*" matches any current representation.
    header = request.headers.get("if-none-match")
    if header is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or etag in tags


def _redirect(location: str) -> Response:
    # 303: the follow-up is always a GET of the new page.
    return RedirectResponse(location, status_code=303, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})


def _html(body: bytes) -> Response:
    return Response(body, media_type="text/html", headers={**SECURITY_HEADERS, "Cache-Control": PAGE_CACHE_CONTROL})


async def _signed_in(request: Request) -> bool:
    current_session: SessionCheck = request.app.state.current_session
    return await current_session(request) is not None


def page_routes(static_dir: Path = STATIC_DIR) -> list[BaseRoute]:
    """``/``, ``/signup``, ``/login``, ``/tasks`` and ``/assets/{name}``; GET (and HEAD) only."""
    assets = load_assets(static_dir / "assets")
    pages = {
        name: pin_assets((static_dir / f"{name}.html").read_text(encoding="utf-8"), assets).encode()
        for name in ("signup", "login", "tasks")
    }

    async def home(request: Request) -> Response:
        return _redirect("/tasks")

    async def signup(request: Request) -> Response:
        return _redirect("/tasks") if await _signed_in(request) else _html(pages["signup"])

    async def login(request: Request) -> Response:
        return _redirect("/tasks") if await _signed_in(request) else _html(pages["login"])

    async def tasks(request: Request) -> Response:
        # The page itself holds no data (it fetches a JWT and the tasks), but sending visitors without a
        # session to the login form at once spares them a page that can only fail (issue 6).
        return _html(pages["tasks"]) if await _signed_in(request) else _redirect("/login")

    async def asset(request: Request) -> Response:
        found = assets.get(request.path_params["name"])
        if found is None:
            return PlainTextResponse("Not Found", status_code=404, headers=dict(SECURITY_HEADERS))
        headers = {**SECURITY_HEADERS, "Cache-Control": ASSET_CACHE_CONTROL, "ETag": found.etag}
        if _not_modified(request, found.etag):
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.media_type, headers=headers)

    return [
        Route("/", home, methods=["GET"]),
        Route("/signup", signup, methods=["GET"]),
        Route("/login", login, methods=["GET"]),
        Route("/tasks", tasks, methods=["GET"]),
        Route("/assets/{name:path}", asset, methods=["GET"]),
    ]
