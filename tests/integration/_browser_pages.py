"""What a person does on the pages, as functions of a Playwright page: fill the forms, read the task list.

Locators go by what people see (labels, roles, button text), so a test that passes means the page is
usable that way too: a field without a label, or a button without an accessible name, fails here.
"""

from __future__ import annotations

import re

from playwright.sync_api import Locator, Page, expect


def path_is(path: str) -> re.Pattern[str]:
    """Matches a page URL whose path is exactly ``path`` (any origin, query allowed)."""
    return re.compile(rf"^https?://[^/]+{re.escape(path)}(\?.*)?$")


def fill_sign_up(page: Page, base_url: str, *, email: str, password: str, name: str = "") -> None:
    page.goto(f"{base_url}/signup")
    if name:
        page.get_by_label("Name").fill(name)
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(password)


def sign_up(page: Page, base_url: str, *, email: str, password: str, name: str = "") -> None:
    fill_sign_up(page, base_url, email=email, password=password, name=name)
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(path_is("/tasks"))
    wait_for_tasks(page)


def fill_log_in(page: Page, base_url: str, *, email: str, password: str) -> None:
    page.goto(f"{base_url}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(password)


def log_in(page: Page, base_url: str, *, email: str, password: str) -> None:
    fill_log_in(page, base_url, email=email, password=password)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(path_is("/tasks"))
    wait_for_tasks(page)


def form_error(page: Page) -> Locator:
    """The server's answer, shown above the form."""
    return page.locator("#form-error")


def wait_for_tasks(page: Page) -> None:
    """Until the list (or its empty state) has been drawn from the API."""
    expect(page.locator("#loading")).to_be_hidden()
    expect(page.locator("#task-list, #empty").filter(visible=True)).to_have_count(1)


def rows(page: Page) -> Locator:
    return page.locator("#task-list > li.task")


def row(page: Page, title: str) -> Locator:
    return rows(page).filter(has=page.locator(".task-title", has_text=re.compile(rf"^{re.escape(title)}$")))


def titles(page: Page) -> Locator:
    return page.locator("#task-list .task-title")


def add_task(page: Page, title: str, *, due: str | None = None) -> None:
    page.get_by_label("New task").fill(title)
    if due:
        page.get_by_label("Due date (optional)").fill(due)
    page.get_by_role("button", name="Add task").click()
    expect(row(page, title)).to_have_count(1)
    expect(page.get_by_label("New task")).to_have_value("")


def toggle(page: Page, title: str) -> None:
    checkbox = page.get_by_role("checkbox", name=f"Completed: {title}")
    before = checkbox.is_checked()
    checkbox.click()
    # Done when the server's answer is drawn: the row is no longer busy (or filtered away).
    expect(page.locator("li.task[aria-busy='true']")).to_have_count(0)
    if row(page, title).count():
        expect(checkbox).to_be_checked(checked=not before)


def rename(page: Page, title: str, new_title: str) -> None:
    page.get_by_role("button", name=f"Edit title of {title}").click()
    editor = page.get_by_role("textbox", name="Task title")
    expect(editor).to_be_focused()
    editor.fill(new_title)
    editor.press("Enter")
    expect(row(page, new_title)).to_have_count(1)


def delete(page: Page, title: str) -> None:
    page.get_by_role("button", name=f"Delete {title}").click()
    expect(row(page, title)).to_have_count(0)


def show(page: Page, status: str) -> None:
    """Click a filter: ``All``, ``Pending`` or ``Completed``."""
    page.get_by_role("group", name="Show tasks").get_by_role("button", name=status).click()
    expect(page.get_by_role("button", name=status, pressed=True)).to_have_count(1)
    wait_for_tasks(page)
