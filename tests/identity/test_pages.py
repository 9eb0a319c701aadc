"""The page handlers in-process (issue 6): redirects by session, security headers, assets, no inline script.

The session check is identity's hook on ``app.state.current_session``; most tests use an app built from
``page_routes()`` alone with a hook that accepts one known cookie, so they exercise the page handlers
only. The last test drives the real identity app: its session cookie opens /tasks and signing out shuts it.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request

from identity.pages import (
    ASSET_CACHE_CONTROL,
    CONTENT_SECURITY_POLICY,
    STATIC_DIR,
    load_assets,
    page_routes,
    pin_assets,
)

pytestmark = pytest.mark.anyio

SESSION_COOKIE = "test.session"
LIVE = "live-session"


async def session_by_cookie(request: Request) -> object | None:
    return {"id": "s1"} if request.cookies.get(SESSION_COOKIE) == LIVE else None


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(routes=page_routes())
    app.state.current_session = session_by_cookie
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as test_client:
        yield test_client


def signed_in(client: httpx.AsyncClient) -> httpx.AsyncClient:
    client.cookies.set(SESSION_COOKIE, LIVE)
    return client


async def page_html(client: httpx.AsyncClient, page: str) -> str:
    if page == "/tasks":
        signed_in(client)
    response = await client.get(page)
    assert response.status_code == 200
    return response.text


def asset_links(html: str) -> list[str]:
    return re.findall(r'(?:href|src)="(/assets/[^"]+)"', html)


PAGES = ("/signup", "/login", "/tasks")


@pytest.mark.parametrize(
    ("path", "session", "status", "location"),
    [
        pytest.param("/", False, 303, "/tasks", id="home redirects to tasks"),
        pytest.param("/", True, 303, "/tasks", id="home redirects to tasks when signed in"),
        pytest.param("/tasks", False, 303, "/login", id="tasks without session goes to login"),
        pytest.param("/tasks", True, 200, None, id="tasks with session"),
        pytest.param("/login", False, 200, None, id="login form"),
        pytest.param("/login", True, 303, "/tasks", id="login when signed in goes to tasks"),
        pytest.param("/signup", False, 200, None, id="signup form"),
        pytest.param("/signup", True, 303, "/tasks", id="signup when signed in goes to tasks"),
    ],
)
async def test_pages_and_redirects(
    client: httpx.AsyncClient, path: str, session: bool, status: int, location: str | None
) -> None:
    if session:
        signed_in(client)
    response = await client.get(path)
    assert response.status_code == status
    assert response.headers.get("location") == location
    assert response.headers["cache-control"] == "no-store"
    if status == 200:
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert response.text.startswith("<!doctype html>")


async def test_a_cookie_that_is_not_a_session_is_sent_to_login(client: httpx.AsyncClient) -> None:
    client.cookies.set(SESSION_COOKIE, "forged")
    response = await client.get("/tasks")
    assert (response.status_code, response.headers["location"]) == (303, "/login")


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/", id="home"),
        pytest.param("/tasks", id="tasks redirect"),
        pytest.param("/login", id="login"),
        pytest.param("/signup", id="signup"),
        pytest.param("/assets/app.css", id="asset"),
        pytest.param("/assets/nope.js", id="missing asset"),
    ],
)
async def test_security_headers_on_every_response(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.headers["content-security-policy"] == (
        "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    )
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"


async def test_tasks_page_is_never_stored(client: httpx.AsyncClient) -> None:
    # After logging out, the back button must not bring the tasks page back from a cache (issue 6).
    response = await signed_in(client).get("/tasks")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("POST", "/login", 405, id="post login"),
        pytest.param("PUT", "/tasks", 405, id="put tasks"),
        pytest.param("DELETE", "/assets/app.css", 405, id="delete asset"),
        pytest.param("HEAD", "/login", 200, id="head login"),
        pytest.param("HEAD", "/assets/tasks.js", 200, id="head asset"),
    ],
)
async def test_methods(client: httpx.AsyncClient, method: str, path: str, status: int) -> None:
    assert (await client.request(method, path)).status_code == status


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        pytest.param("app.css", "text/css; charset=utf-8", id="css"),
        pytest.param("common.js", "text/javascript; charset=utf-8", id="common js"),
        pytest.param("auth.js", "text/javascript; charset=utf-8", id="auth js"),
        pytest.param("tasks.js", "text/javascript; charset=utf-8", id="tasks js"),
        pytest.param("favicon.svg", "image/svg+xml", id="svg"),
    ],
)
async def test_assets_have_their_type_and_are_cached_modestly(
    client: httpx.AsyncClient, name: str, content_type: str
) -> None:
    response = await client.get(f"/assets/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["cache-control"] == ASSET_CACHE_CONTROL == "public, max-age=3600"
    assert response.content == (STATIC_DIR / "assets" / name).read_bytes()
    etag = response.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{16}"', etag)

    for if_none_match in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        revalidated = await client.get(f"/assets/{name}", headers={"If-None-Match": if_none_match})
        assert revalidated.status_code == 304, if_none_match
        assert revalidated.content == b""
        assert revalidated.headers["etag"] == etag
    assert (await client.get(f"/assets/{name}", headers={"If-None-Match": '"other"'})).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/assets/missing.js", id="unknown file"),
        pytest.param("/assets/", id="directory"),
        pytest.param("/assets/login.html", id="pages are not assets"),
        pytest.param("/assets/..%2Fpages.py", id="encoded traversal"),
        pytest.param("/assets/../pages.py", id="dot segments"),
        pytest.param("/assets/%2E%2E/login.html", id="encoded dot segments"),
        pytest.param("/assets/app.css/", id="trailing slash"),
    ],
)
async def test_only_known_assets_are_served(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert b"{" not in response.content and b"<" not in response.content


@pytest.mark.parametrize("page", PAGES)
async def test_pages_link_existing_assets_pinned_by_hash(client: httpx.AsyncClient, page: str) -> None:
    html = await page_html(client, page)
    links = asset_links(html)
    assert any(link.startswith("/assets/app.css?v=") for link in links)
    assert any(link.startswith("/assets/common.js?v=") for link in links)
    for link in links:
        _, _, version = link.partition("?v=")
        response = await client.get(link)
        assert response.status_code == 200, link
        assert response.headers["etag"].strip('"').startswith(version), link


class _InlineCode(HTMLParser):
    """Everything the CSP would block: inline script, event-handler and style attributes, <style>."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        self.problems += [f"<{tag} {name}>" for name in names if name.startswith("on") or name == "style"]
        if tag == "style":
            self.problems.append("<style>")
        if tag == "script":
            self._in_script = True
            source = dict(attrs).get("src")
            if not source:
                self.problems.append("<script> without src")
            else:
                self.scripts.append(source)
        for name, value in attrs:
            if value and value.strip().lower().startswith("javascript:"):
                self.problems.append(f"<{tag} {name}=javascript:>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("inline script body")


@pytest.mark.parametrize("name", ["signup.html", "login.html", "tasks.html"])
def test_pages_have_no_inline_code(name: str) -> None:
    parser = _InlineCode()
    parser.feed((STATIC_DIR / name).read_text())
    assert parser.problems == []
    assert parser.scripts, "each page runs its script from /assets"


@pytest.mark.parametrize(
    ("page", "script"),
    [
        pytest.param("/signup", "/assets/auth.js", id="signup"),
        pytest.param("/login", "/assets/auth.js", id="login"),
        pytest.param("/tasks", "/assets/tasks.js", id="tasks"),
    ],
)
async def test_each_page_loads_its_script(client: httpx.AsyncClient, page: str, script: str) -> None:
    html = await page_html(client, page)
    assert f'src="{script}?v=' in html


@pytest.mark.parametrize(
    ("page", "form_mode", "password_autocomplete"),
    [
        pytest.param("login.html", "sign-in", "current-password", id="login"),
        pytest.param("signup.html", "sign-up", "new-password", id="signup"),
    ],
)
def test_forms_label_every_input(page: str, form_mode: str, password_autocomplete: str) -> None:
    html = (STATIC_DIR / page).read_text()
    assert f'data-mode="{form_mode}"' in html
    assert f'autocomplete="{password_autocomplete}"' in html
    ids = re.findall(r'<input id="([^"]+)"', html)
    assert {"email", "password"} <= set(ids)
    for input_id in ids:
        if input_id != "remember":  # wrapped in its <label>
            assert f'<label for="{input_id}"' in html, input_id


def test_csp_constant_is_what_pages_send() -> None:
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY


def test_unknown_asset_type_fails_at_start_up(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="no media type"):
        load_assets(tmp_path)


def test_link_to_a_missing_asset_fails_at_start_up(tmp_path: Path) -> None:
    (tmp_path / "app.css").write_text("body{}")
    assets = load_assets(tmp_path)
    assert pin_assets('<link href="/assets/app.css">', assets).startswith('<link href="/assets/app.css?v=')
    with pytest.raises(ValueError, match=r"missing\.js"):
        pin_assets('<script src="/assets/missing.js"></script>', assets)


async def test_identity_app_serves_the_pages_by_its_session_cookie(h: Any) -> None:
    """identity's own app, on a migrated database: sign up, the cookie opens /tasks, sign out shuts it."""
    signed_up = await h.sign_up("pages@example.com", "correct horse battery")
    cookie = signed_up.headers.get_list("set-cookie")[0].split(";", 1)[0]
    as_browser = {"cookie": cookie, "origin": "http://127.0.0.1:8000"}

    tasks = await h.client.get("/tasks", headers=as_browser)
    assert tasks.status_code == 200
    assert tasks.headers["cache-control"] == "no-store"
    assert tasks.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    login = await h.client.get("/login", headers=as_browser)
    assert (login.status_code, login.headers["location"]) == (303, "/tasks")
    asset = await h.client.get("/assets/tasks.js")
    assert (asset.status_code, asset.headers["content-type"]) == (200, "text/javascript; charset=utf-8")

    signed_out = await h.client.post("/api/auth/sign-out", headers=as_browser)
    assert signed_out.status_code == 200, signed_out.text
    after = await h.client.get("/tasks", headers=as_browser)
    assert (after.status_code, after.headers["location"]) == (303, "/login")
    assert (await h.client.get("/login", headers=as_browser)).status_code == 200
    assert (await h.client.get("/tasks")).status_code == 303


def test_every_static_file_is_packaged() -> None:
    """The pages are read from the installed package: a file left out of the wheel stops identity at start-up."""
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["*"]
    missing = [
        str(path.relative_to(STATIC_DIR))
        for path in STATIC_DIR.rglob("*")
        if path.is_file() and not any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns)
    ]
    assert missing == []
