"""Headless Chromium for the browser tests: Debian's ``/usr/bin/chromium`` driven by Playwright for Python.

Playwright's own browser download (``playwright install``) is never used: CI installs the distribution's
Chromium (``.ci/run``) and ``EDGE_TEST_CHROMIUM`` may point elsewhere, as in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, ViewportSize, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("EDGE_TEST_CHROMIUM", "/usr/bin/chromium")
#: No sandbox (containers run as root), no GPU, and nothing that phones home or updates itself mid-test.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
#: Git-ignored; CI keeps the directory as a test artifact.
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 375, "height": 740}


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Page, name: str) -> Path:
    """Save the whole page as ``test-artifacts/screenshots/<name>.png`` once the page has settled."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^a-z0-9-]+', '-', name.lower())}.png"
    # No hover effects from wherever the last click left the pointer; transitions (border colours, the
    # spinner) would otherwise be caught half-way.
    page.mouse.move(0, 0)
    page.screenshot(path=path, full_page=True, animations="disabled")
    return path
