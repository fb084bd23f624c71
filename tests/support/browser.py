"""What the browser tests (tests/browser) share besides their fixture: Debian's chromium, its flags, the bound on
every wait, and where the screenshots the docs show are saved: into docs/images with
``LISTENER_UPDATE_SCREENSHOTS=1`` (``make screenshots``), else into a scratch folder, so that a test run leaves
the working tree as it was.

The tests drive Debian's ``chromium`` package through Playwright; they never use browsers Playwright downloads
(never run ``playwright install``). ``make chromium`` and .ci/run install the package when it is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

__all__ = ["CHROMIUM_ARGS", "IMAGES", "ROOT", "SCRATCH_IMAGES", "TIMEOUT_MS", "UPDATE_SCREENSHOTS", "chromium_binary",
           "screenshot_path"]

ROOT = Path(__file__).resolve().parents[2]
#: Where the docs' screenshots live (docs/images/<name>.png).
IMAGES = ROOT / "docs" / "images"
#: Where they go when the docs' are not to be replaced.
SCRATCH_IMAGES = Path(tempfile.gettempdir()) / "listener-screenshots"
#: The environment variable that, set to 1, makes the tests replace the docs' screenshots.
UPDATE_SCREENSHOTS = "LISTENER_UPDATE_SCREENSHOTS"
#: The bound on every Playwright wait (navigation, selectors, evaluate), in milliseconds.
TIMEOUT_MS = 10_000
#: Root in a container: no sandbox; no GPU, no /dev/shm (often 64 MB there), no calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def chromium_binary() -> Optional[str]:
    """Debian's ``chromium`` on PATH, or None."""
    return shutil.which("chromium")


def screenshot_path(name: str) -> Path:
    """Where a test saves a screenshot the docs show, e.g.
    ``await browser_page.screenshot(path=screenshot_path("dashboard-overview"))``: ``docs/images/<name>.png`` of
    this repository with ``LISTENER_UPDATE_SCREENSHOTS=1``, else ``<name>.png`` in a scratch folder (the folder
    is created)."""
    if name.endswith(".png"):
        name = name[:-4]
    if not _NAME.fullmatch(name):
        raise ValueError(f"screenshot name {name!r}: letters, digits, '_', '-' and '.' only, no folders")
    folder = IMAGES if os.environ.get(UPDATE_SCREENSHOTS) == "1" else SCRATCH_IMAGES
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.png"
