"""The web pages in a real browser, through the gateway (issue 6).

Headless Chromium (Debian's, see ``_browser_chromium``) against the three real services on loopback:
sign up, manage tasks, reload, log out, the back button, a second user, and the errors people meet.
A screenshot of each page goes to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Request, Response, expect

from scripts.devstack import Stack, free_port
from tests.integration._browser_chromium import DESKTOP, PHONE, chromium, screenshot
from tests.integration._browser_pages import (
    add_task,
    delete,
    fill_log_in,
    fill_sign_up,
    form_error,
    log_in,
    path_is,
    rename,
    row,
    rows,
    show,
    sign_up,
    titles,
    toggle,
    wait_for_tasks,
)

pytestmark = [pytest.mark.integration, pytest.mark.browser]

PASSWORD = "correct horse battery staple"


def unique_email(who: str) -> str:
    return f"{who}-{secrets.token_hex(4)}@example.com"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport=DESKTOP)
    # Expectations wait up to 10 s: the services share two busy cores with the rest of the suite.
    context.set_default_timeout(10_000)
    expect.set_options(timeout=10_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    page = context.new_page()
    problems: list[str] = []
    # A CSP violation or a script error is a bug even when the page looks right.
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    yield page
    unexpected = [p for p in problems if not _expected_console_error(p)]
    assert unexpected == [], unexpected


def _expected_console_error(text: str) -> bool:
    # Chromium logs every non-2xx fetch ("Failed to load resource: ... 401"); the tests cause those on purpose.
    return text.startswith("Failed to load resource")


def sign_up_over_api(base_url: str, email: str) -> str:
    with httpx.Client(base_url=base_url, timeout=10, trust_env=False) as client:
        response = client.post("/api/auth/sign-up/email", json={"name": "", "email": email, "password": PASSWORD})
        assert response.status_code == 200, response.text
        return str(response.json()["user"]["id"])


def test_journey(stack: Stack, context: BrowserContext, page: Page) -> None:
    base = stack.public_url
    alice = unique_email("alice")
    bearer_tokens: list[str] = []

    def record_bearer(request: Request) -> None:
        authorization = request.headers.get("authorization", "")
        if "/tasks" in request.url and authorization.startswith("Bearer "):
            bearer_tokens.append(authorization.removeprefix("Bearer "))

    page.on("request", record_bearer)

    # Without a session, /tasks sends people to the login form.
    page.goto(f"{base}/tasks")
    expect(page).to_have_url(path_is("/login"))
    expect(page.get_by_role("heading", name="Welcome back")).to_be_visible()
    screenshot(page, "login")

    # Client-side validation: nothing is sent until the email and password are acceptable.
    page.get_by_role("link", name="Create an account").click()
    expect(page).to_have_url(path_is("/signup"))
    screenshot(page, "signup")
    fill_sign_up(page, base, email="alice@", password="short")
    page.get_by_role("button", name="Create account").click()
    expect(page.locator("#email-error")).to_have_text("Enter a valid email address, like name@example.com.")
    expect(page.locator("#password-error")).to_have_text("Use at least 8 characters.")
    expect(page.get_by_label("Email")).to_be_focused()
    expect(page.get_by_label("Email")).to_have_attribute("aria-invalid", "true")
    screenshot(page, "signup-invalid")

    # Sign up; while the request is in flight the button is disabled and says so.
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 600, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    fill_sign_up(page, base, email=alice, password=PASSWORD, name="Alice")
    submit = page.get_by_role("button", name="Create account")
    submit.click()
    busy = page.get_by_role("button", name="Creating account…")
    expect(busy).to_be_disabled()
    expect(busy).to_have_attribute("aria-busy", "true")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    expect(page).to_have_url(path_is("/tasks"))
    wait_for_tasks(page)
    expect(page.locator("#user-email")).to_have_text(alice)
    expect(page.get_by_role("heading", name="No tasks yet")).to_be_visible()
    screenshot(page, "tasks-empty")

    # Add three tasks (newest first), complete one, filter, rename one, delete one.
    add_task(page, "Buy milk")
    add_task(page, "Write the report", due="2030-01-15")
    add_task(page, "Call the plumber")
    expect(titles(page)).to_have_text(["Call the plumber", "Write the report", "Buy milk"])
    expect(row(page, "Write the report").locator(".task-due")).to_contain_text("2030")

    toggle(page, "Buy milk")
    expect(row(page, "Buy milk")).to_have_class("task is-completed")

    show(page, "Pending")
    expect(page).to_have_url(path_is("/tasks"))
    assert page.url.endswith("?status=pending")
    expect(titles(page)).to_have_text(["Call the plumber", "Write the report"])
    show(page, "Completed")
    expect(titles(page)).to_have_text(["Buy milk"])
    show(page, "All")
    expect(titles(page)).to_have_text(["Call the plumber", "Write the report", "Buy milk"])

    rename(page, "Write the report", "Write the quarterly report")
    delete(page, "Call the plumber")
    expect(titles(page)).to_have_text(["Write the quarterly report", "Buy milk"])
    screenshot(page, "tasks")

    # Reload: the same state comes back from the server.
    page.reload()
    wait_for_tasks(page)
    expect(titles(page)).to_have_text(["Write the quarterly report", "Buy milk"])
    expect(page.get_by_role("checkbox", name="Completed: Buy milk")).to_be_checked()
    expect(page.get_by_role("checkbox", name="Completed: Write the quarterly report")).not_to_be_checked()

    # The JWT lives in memory only: nothing in storage, and the session cookie is invisible to scripts.
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0
    assert "session_token" not in page.evaluate("document.cookie")
    assert bearer_tokens, "the tasks API was called with a bearer token"

    # The phone layout.
    page.set_viewport_size(PHONE)
    screenshot(page, "tasks-phone")
    page.set_viewport_size(DESKTOP)

    # A second visit to /tasks puts a /tasks entry in the history behind the one we log out from.
    page.goto(f"{base}/tasks?status=all")
    wait_for_tasks(page)
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(path_is("/login"))
    page.go_back()
    page.wait_for_load_state()
    expect(page).to_have_url(path_is("/login"))
    expect(rows(page)).to_have_count(0)
    page.goto(f"{base}/tasks")
    expect(page).to_have_url(path_is("/login"))

    # Wrong password: the server's message next to the form, and the password selected for another try.
    fill_log_in(page, base, email=alice, password="not the password")
    page.get_by_role("button", name="Log in").click()
    expect(form_error(page)).to_have_text("Invalid email or password")
    expect(page.get_by_label("Password", exact=True)).to_be_focused()
    expect(page.get_by_role("button", name="Log in")).to_be_enabled()
    screenshot(page, "login-error")

    # Another person sees none of Alice's tasks.
    bob = unique_email("bob")
    sign_up_over_api(base, bob)
    log_in(page, base, email=bob, password=PASSWORD)
    expect(page.locator("#user-email")).to_have_text(bob)
    expect(page.get_by_role("heading", name="No tasks yet")).to_be_visible()
    expect(rows(page)).to_have_count(0)
    show(page, "Completed")
    expect(rows(page)).to_have_count(0)


def test_email_taken_is_shown(strict_stack: Stack, page: Page) -> None:
    taken = unique_email("taken")
    sign_up_over_api(strict_stack.public_url, taken)
    fill_sign_up(page, strict_stack.public_url, email=taken.upper(), password=PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(form_error(page)).to_have_text("User already exists. Use another email.")
    expect(page).to_have_url(path_is("/signup"))
    expect(page.get_by_role("button", name="Create account")).to_be_enabled()
    screenshot(page, "signup-email-taken")


def test_keyboard_only(stack: Stack, page: Page) -> None:
    """Every step works from the keyboard: labelled fields in order, Enter submits, Space ticks, Escape cancels."""
    base = stack.public_url
    email = unique_email("kim")
    page.goto(f"{base}/signup")
    keyboard = page.keyboard
    keyboard.press("Tab")  # the brand link
    for field, value in (("name", "Kim"), ("email", email), ("password", PASSWORD)):
        keyboard.press("Tab")
        expect(page.locator(f"#{field}")).to_be_focused()
        keyboard.type(value)
    keyboard.press("Enter")
    expect(page).to_have_url(path_is("/tasks"))
    wait_for_tasks(page)

    new_task = page.get_by_label("New task")
    new_task.focus()
    for title in ("First", "Second"):
        keyboard.type(title)
        keyboard.press("Enter")
        expect(row(page, title)).to_have_count(1)
        expect(new_task).to_be_focused()  # ready for the next one

    first = row(page, "First")
    first.get_by_role("checkbox").focus()
    keyboard.press("Space")
    expect(first).to_have_class("task is-completed")  # drawn from the server's answer
    expect(first.get_by_role("checkbox")).to_be_checked()
    expect(first.get_by_role("checkbox")).to_be_focused()

    keyboard.press("Tab")
    expect(first.get_by_role("button", name="Edit title of First")).to_be_focused()
    keyboard.press("Enter")
    editor = page.get_by_role("textbox", name="Task title")
    expect(editor).to_be_focused()
    keyboard.type("Never saved")
    keyboard.press("Escape")
    expect(titles(page)).to_have_text(["Second", "First"])
    expect(first.get_by_role("button", name="Edit title of First")).to_be_focused()
    keyboard.press("Enter")
    keyboard.type("First, renamed")
    keyboard.press("Enter")
    expect(titles(page)).to_have_text(["Second", "First, renamed"])

    # Deleting moves the focus to a neighbour instead of dropping it to the top of the page.
    page.get_by_role("button", name="Delete Second").focus()
    keyboard.press("Enter")
    expect(titles(page)).to_have_text(["First, renamed"])
    expect(page.get_by_role("button", name="Delete First, renamed")).to_be_focused()


def jwt_lifetime(token: str) -> int:
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return int(claims["exp"]) - int(claims["iat"])


def test_jwt_is_renewed_before_expiry_and_a_lost_session_leads_to_login(
    stack: Stack, context: BrowserContext, page: Page
) -> None:
    """The page's clock is Playwright's, so the JWT's lifetime passes in an instant (issue 6: "refreshes it
    before it expires"); identity and the gateway keep real time."""
    base = stack.public_url
    issued: list[Response] = []
    page.on("response", lambda response: issued.append(response) if response.url.endswith("/api/auth/token") else None)
    page.clock.install()
    sign_up(page, base, email=unique_email("erin"), password=PASSWORD)
    assert len(issued) == 1
    lifetime = jwt_lifetime(issued[0].json()["token"])

    # Not yet: more than a minute of validity left.
    page.clock.run_for((lifetime - 90) * 1000)
    add_task(page, "Before renewal")
    assert len(issued) == 1
    # A minute before expiry the page fetches a new JWT on its own, and goes on using it.
    with page.expect_response("**/api/auth/token"):
        page.clock.run_for(40 * 1000)
    add_task(page, "After renewal")
    assert len(issued) == 2

    # The session ends elsewhere (signed out on another device): the next renewal is refused -> login.
    cookie = next(c for c in context.cookies() if c["name"].endswith("session_token"))
    with httpx.Client(base_url=base, timeout=10, trust_env=False) as client:
        ended = client.post(
            "/api/auth/sign-out",
            headers={"Cookie": f"{cookie['name']}={cookie['value']}", "Origin": base},
        )
        assert ended.status_code == 200, ended.text
    page.clock.run_for(lifetime * 1000)
    expect(page).to_have_url(path_is("/login"))


def test_logged_out_jwt_is_refused_by_the_gateway(stack: Stack, page: Page) -> None:
    """Issue 6: after logging out, the old JWT no longer works at the gateway (revocation: issues 3 and 9)."""
    base = stack.public_url
    tokens: list[str] = []
    page.on(
        "request",
        lambda request: (
            tokens.append(request.headers["authorization"].removeprefix("Bearer "))
            if "authorization" in request.headers
            else None
        ),
    )
    email = unique_email("carol")
    user_id = sign_up_over_api(base, email)
    log_in(page, base, email=email, password=PASSWORD)
    assert tokens
    jwt = tokens[-1]
    with httpx.Client(base_url=base, timeout=10, trust_env=False) as client:
        assert client.get(f"/api/{user_id}/tasks", headers={"Authorization": f"Bearer {jwt}"}).status_code == 200
        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(path_is("/login"))
        # Issue 9: every gateway refuses a signed-out session's JWTs within 2 seconds.
        status = 200
        for _ in range(15):
            status = client.get(f"/api/{user_id}/tasks", headers={"Authorization": f"Bearer {jwt}"}).status_code
            if status == 401:
                break
            page.wait_for_timeout(200)
        assert status == 401


def test_conflicting_edit_is_reported(strict_stack: Stack, context: BrowserContext, page: Page) -> None:
    """An error from the tasks API is shown, not swallowed: a stale write is refused (412, If-Match) and the
    page says so and shows the task as it now is."""
    base = strict_stack.public_url
    sign_up(page, base, email=unique_email("fay"), password=PASSWORD)
    add_task(page, "Shared task")
    other_tab = context.new_page()
    other_tab.goto(f"{base}/tasks")
    wait_for_tasks(other_tab)
    rename(other_tab, "Shared task", "Renamed in the other tab")
    other_tab.close()

    page.get_by_role("checkbox", name="Completed: Shared task").click()
    expect(page.locator("#error-text")).to_have_text(
        "Could not update the task: It was changed somewhere else; this is the latest version."
    )
    expect(titles(page)).to_have_text(["Renamed in the other tab"])
    expect(page.get_by_role("checkbox", name="Completed: Renamed in the other tab")).not_to_be_checked()
    screenshot(page, "tasks-error")
    page.get_by_role("button", name="Dismiss error").click()
    expect(page.locator("#error")).to_be_hidden()


@pytest.fixture(scope="session")
def strict_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own for the error cases: its identity allows three attempts per account a minute (the
    sign-up is one), so the 429 comes quickly, and none of this uses up the shared stack's per-address
    sign-up and sign-in budget (10 a minute, shared by every test through the one gateway address).
    Session-scoped: it stops with the shared stack at the end of the run."""
    env = {**os.environ, "IDENTITY_RATE_LIMIT_PER_ACCOUNT": "3", "IDENTITY_RATE_LIMIT_WINDOW": "60"}
    ports = {"gateway": free_port(), "identity": free_port(), "tasks": free_port()}
    data: Path = tmp_path_factory.mktemp("strict-stack")
    with Stack(data, ports=ports, env=env) as running:
        yield running


def test_too_many_attempts_is_shown(strict_stack: Stack, page: Page) -> None:
    base = strict_stack.public_url
    email = unique_email("dave")
    sign_up_over_api(base, email)
    fill_log_in(page, base, email=email, password="wrong password 1")
    submit = page.get_by_role("button", name="Log in")
    for expected_status in (401, 401, 429):
        with page.expect_response("**/api/auth/sign-in/email") as answer:
            submit.click()
        assert answer.value.status == expected_status
        if expected_status == 401:
            expect(form_error(page)).to_have_text("Invalid email or password")
    expect(form_error(page)).to_contain_text("Too many requests. Please try again later.")
    expect(form_error(page)).to_contain_text(" seconds.")
    expect(submit).to_be_enabled()
    screenshot(page, "login-rate-limited")
