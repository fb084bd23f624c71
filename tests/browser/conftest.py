"""Fixtures of the browser tests: Debian's chromium driven through Playwright's async API.

Every test here is marked ``browser`` and, unless it names its kind itself, ``mqtt_integration`` when it uses the
session's Mosquitto (tests/mqtt/conftest.py's fixtures), else ``integration``: ``make test`` runs them all, and
``make test-mqtt``, ``make test-integration`` and ``make test-browser`` their share. Like a missing mosquitto, a
missing chromium is an error, not a skip: ``make chromium`` and .ci/run install it. Helpers
(``screenshot_path``, the flags, the timeout) are in tests/support/browser.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, List

import pytest

from tests.conftest import KINDS
from tests.support.browser import CHROMIUM_ARGS, TIMEOUT_MS, chromium_binary

if TYPE_CHECKING:
    from playwright.async_api import Page

_HERE = Path(__file__).parent
#: Seconds allowed to start Playwright's driver and to close each of page, context, browser and driver.
_STEP_SECONDS = TIMEOUT_MS / 1000


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    """Mark this folder's tests ``browser``, and their kind unless they name it: a real broker or not."""
    for item in items:
        try:
            item.path.relative_to(_HERE)
        except ValueError:
            continue
        item.add_marker("browser")
        if not any(mark.name in KINDS for mark in item.iter_markers()):
            uses_broker = "mosquitto" in getattr(item, "fixturenames", ())
            item.add_marker("mqtt_integration" if uses_broker else "integration")


async def _bounded(step: "Awaitable[Any]", what: str) -> None:
    """Await a teardown step within ``_STEP_SECONDS``; a hung or failed close must not hang the suite."""
    try:
        await asyncio.wait_for(step, _STEP_SECONDS)
    except Exception as exc:  # noqa: BLE001 - best effort: the next steps still run
        print(f"browser_page teardown: {what}: {exc!r}")


@pytest.fixture
async def browser_page() -> AsyncIterator["Page"]:
    """A new page in a new context of a headless chromium started for this test; all closed afterwards.

    Every wait is bounded: the page's default timeouts (navigation included) are ``TIMEOUT_MS``.
    """
    binary = chromium_binary()
    if binary is None:
        pytest.fail("chromium is not installed (make chromium, or .ci/run, installs Debian's package)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("playwright is not installed (it is in the dev and test extras: make install)")

    playwright = await asyncio.wait_for(async_playwright().start(), _STEP_SECONDS)
    try:
        browser = await playwright.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS, headless=True,
                                                   timeout=TIMEOUT_MS)
        try:
            context = await browser.new_context()
            context.set_default_timeout(TIMEOUT_MS)
            context.set_default_navigation_timeout(TIMEOUT_MS)
            try:
                page = await context.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                page.set_default_navigation_timeout(TIMEOUT_MS)
                try:
                    yield page
                finally:
                    await _bounded(page.close(), "closing the page")
            finally:
                await _bounded(context.close(), "closing the context")
        finally:
            await _bounded(browser.close(), "closing chromium")
    finally:
        await _bounded(playwright.stop(), "stopping Playwright")
