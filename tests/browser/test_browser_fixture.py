"""The ``browser_page`` fixture on this machine: Debian's chromium starts, runs a page's script, and text set
with ``textContent`` stays text (what the dashboard relies on to show job ids and errors safely)."""

from __future__ import annotations

import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Iterator, List

import pytest

from tests.support.browser import IMAGES, ROOT, SCRATCH_IMAGES, UPDATE_SCREENSHOTS, chromium_binary, screenshot_path

if TYPE_CHECKING:
    from playwright.async_api import Page

HOSTILE = '<script>window.injected = true</script><img src="missing.png" onerror="window.injected = true">'

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>browser fixture</title></head>
<body>
<p id="ran"></p>
<p id="inert"></p>
<p id="control"></p>
<script>
window.injected = false;
window.controlRan = false;
document.getElementById("ran").textContent = "the page's script ran";
document.getElementById("inert").textContent = %s;
// The same kind of markup through innerHTML does run: proof that the check below could see it.
document.getElementById("control").innerHTML = '<img src="missing.png" onerror="window.controlRan = true">';
</script>
</body></html>
""" % repr(HOSTILE).replace("</", "<\\/")


class _Handler(BaseHTTPRequestHandler):
    paths: List[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        self.paths.append(self.path)
        if self.path != "/":
            self.send_error(404)
            return
        body = PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass


@pytest.fixture
def page_server() -> Iterator[str]:
    """The page above on 127.0.0.1, a free port, served from a thread; its base URL."""
    handler = type("Handler", (_Handler,), {"paths": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="page-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


async def test_the_page_script_runs_and_text_content_stays_inert(browser_page: "Page", page_server: str) -> None:
    response = await browser_page.goto(page_server + "/")
    assert response is not None and response.status == 200

    assert await browser_page.text_content("#ran") == "the page's script ran"
    # The control's image fails to load and its handler runs; by then the hostile one would have too.
    await browser_page.wait_for_function("window.controlRan === true")
    assert await browser_page.text_content("#inert") == HOSTILE
    assert await browser_page.locator("#inert *").count() == 0
    assert await browser_page.evaluate("window.injected") is False


async def test_it_is_debians_chromium(browser_page: "Page") -> None:
    browser = browser_page.context.browser
    assert browser is not None
    binary = chromium_binary()
    assert binary is not None
    reported = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30,  # noqa: S603
                              check=True).stdout
    assert browser.version in reported, (browser.version, reported)


async def test_screenshots(browser_page: "Page", page_server: str, tmp_path: Any,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    await browser_page.goto(page_server + "/")
    shot = tmp_path / "page.png"
    await browser_page.screenshot(path=str(shot))
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    monkeypatch.setenv(UPDATE_SCREENSHOTS, "1")  # make screenshots: the docs' own
    assert screenshot_path("dashboard-overview") == IMAGES / "dashboard-overview.png"
    assert screenshot_path("dashboard-overview.png") == IMAGES / "dashboard-overview.png"
    assert IMAGES.is_dir() and IMAGES.parts[-2:] == ("docs", "images")
    monkeypatch.delenv(UPDATE_SCREENSHOTS)  # make test: the working tree is left as it was
    assert screenshot_path("dashboard-overview") == SCRATCH_IMAGES / "dashboard-overview.png"
    assert SCRATCH_IMAGES.is_dir() and ROOT not in SCRATCH_IMAGES.parents
    with pytest.raises(ValueError):
        screenshot_path("../outside")
