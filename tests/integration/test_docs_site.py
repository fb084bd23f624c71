"""The documentation site: `mkdocs build --strict` passes, no page is left out of the nav, and the
configuration chapter's table, generated at build time, has a row for every EventListenerConfig field.

The strict build fails on a broken link or anchor, a nav entry without its page, a page outside the nav and a
docstring mkdocstrings cannot read (a parameter documented that the signature does not have).
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
import subprocess  # noqa: S404
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterator, List

import pytest

from Listener import EventListenerConfig
from tests.support.file_modules import load_file_module

pytest.importorskip("mkdocs", reason="mkdocs is not installed (the dev and docs extras have it)")
from mkdocs.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
BUILD_TIMEOUT = 300


@dataclasses.dataclass(frozen=True)
class Build:
    returncode: int
    output: str
    site: Path


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    site = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],  # noqa: S603
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    return Build(done.returncode, done.stdout + done.stderr, site)


def hook_module() -> ModuleType:
    return load_file_module("options_table_hook", DOCS / "hooks" / "options_table.py")


def nav_files(nav: Any) -> Iterator[str]:
    """Every page a nav (lists of {title: page or nested list}) names."""
    if isinstance(nav, str):
        yield nav
    elif isinstance(nav, list):
        for item in nav:
            yield from nav_files(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            yield from nav_files(value)


def test_strict_build_succeeds(build: Build) -> None:
    warnings = [line for line in build.output.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert build.returncode == 0, "\n".join(warnings) or build.output[-3000:]
    assert (build.site / "index.html").is_file()


def test_every_page_is_in_the_nav() -> None:
    config = load_config(str(ROOT / "mkdocs.yml"))
    in_nav = set(nav_files(config["nav"]))
    pages = {str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md") if "hooks" not in path.relative_to(DOCS).parts}
    assert sorted(pages - in_nav) == []
    assert sorted(in_nav - pages) == []


def _rows(page: str) -> Dict[str, str]:
    """The text of each table row of a built page, by the inline code of its first cell."""
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", page, re.S):
        first = re.match(r"\s*<td>\s*<code>([^<]+)</code>", row)
        if first:
            rows[first.group(1)] = html.unescape(re.sub(r"<[^>]+>", "", row))
    return rows


def _default(field: "dataclasses.Field[Any]") -> str:
    value = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    return json.dumps(value) if isinstance(value, str) else repr(value)


def test_options_table_names_every_field_with_its_default_and_environment_variable(build: Build) -> None:
    page = (build.site / "configuration" / "index.html").read_text(encoding="utf-8")
    assert "options-table" not in page  # the marker was replaced
    rows = _rows(page)
    problems: List[str] = []
    for field in dataclasses.fields(EventListenerConfig):
        row = rows.get(field.name)
        if row is None:
            problems.append(f"{field.name}: no row")
            continue
        default = "generated" if field.name == "uri" else _default(field)
        for expected in (default, f"MQTT_{field.name.upper()}", f"--set {field.name}="):
            if expected not in row:
                problems.append(f"{field.name}: {expected!r} not in {row!r}")
    assert problems == []
    assert "MQTT_CA_FILE" in rows["cafile"]  # the manual's spelling, found through environment_variables()


def test_a_field_without_a_description_fails_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = hook_module()
    assert hook.on_page_markdown("a\n<!-- options-table -->\n").count("\n| `") == len(EventListenerConfig.field_names())
    monkeypatch.setattr(hook, "FIELD_HELP", {k: v for k, v in hook.FIELD_HELP.items() if k != "job_store"})
    with pytest.raises(ValueError, match="job_store"):
        hook.on_page_markdown("<!-- options-table -->")


def test_cli_page_shows_every_commands_help(build: Build) -> None:
    page = html.unescape((build.site / "reference" / "cli" / "index.html").read_text(encoding="utf-8"))
    assert "cli-help" not in page
    for text in ("usage: mqtt-listener [-h]", "usage: mqtt-listener run", "usage: mqtt-listener check-config",
                 "usage: mqtt-listener publish", "--with-env", "--embedded-broker"):
        assert text in page


def test_reference_pages_show_no_sphinx_roles(build: Build) -> None:
    """Docstrings name objects with :class:`…`; the site shows the name alone."""
    role = re.compile(r":(?:class|meth|func|data|attr|mod|exc):<code>")
    shown = {str(path.relative_to(build.site)): role.findall(path.read_text(encoding="utf-8"))
             for path in (build.site / "reference").rglob("index.html")}
    assert {page: roles for page, roles in shown.items() if roles} == {}
    assert len(shown) >= 9
