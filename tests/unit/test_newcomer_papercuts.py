"""The small things a newcomer trips over first: the README's layout and the changelog's headings."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "Listener"


def readme_layout_entries() -> List[str]:
    """The paths under ``Listener/`` that README's Layout block names, one per line, nested by indentation."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1]
    block = section.split("```\n", 2)[1]
    entries: List[str] = []
    stack: List[str] = []
    inside = False
    for line in block.splitlines():
        if line.startswith("Listener/"):
            inside, stack = True, ["Listener"]
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):
            break  # the next top-level entry (scripts/, docs/, ...)
        word = line.split()[0] if line.strip() else ""
        indent = len(line) - len(line.lstrip(" "))
        if not word or indent % 2 or indent // 2 > len(stack) or not re.fullmatch(r"[\w.]+/?", word):
            continue  # a description carried over to the next line
        stack = stack[: indent // 2]
        if word.endswith("/"):
            stack.append(word[:-1])
            entries.append("/".join(stack) + "/")
        else:
            entries.append("/".join(stack + [word]))
    return entries


def test_readme_layout_names_every_module_once_and_nothing_else() -> None:
    entries = readme_layout_entries()
    twice = sorted(name for name, count in Counter(entries).items() if count > 1)
    assert not twice, f"README's Layout lists these more than once: {twice}"
    listed = {entry for entry in entries if not entry.endswith("/")}
    folders = {entry.rstrip("/") for entry in entries if entry.endswith("/")}
    on_disk = {path.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("*")
               if path.is_file() and (path.suffix == ".py" or path.name == "py.typed") and "__pycache__" not in path.parts}
    # A subpackage's __init__.py is described by its folder's line.
    expected = {path for path in on_disk if not (path.endswith("/__init__.py") and path.rsplit("/", 1)[0] in folders)}
    assert sorted(expected - listed) == [], "modules missing from README's Layout"
    assert sorted(listed - on_disk) == [], "README's Layout names files that do not exist"
    subpackages = {path.parent.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("*/__init__.py")}
    assert sorted(subpackages - folders) == [], "subpackages missing from README's Layout"
    assert [folder for folder in sorted(folders) if not (ROOT / folder).is_dir()] == []  # data folders (assets/) too


def test_each_changelog_release_has_each_heading_once() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    for release in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        title = release.splitlines()[0]
        headings = re.findall(r"^### (.+)$", release, flags=re.MULTILINE)
        twice = sorted(name for name, count in Counter(headings).items() if count > 1)
        assert not twice, f"CHANGELOG section {title!r} has these headings more than once: {twice}"


def test_the_architecture_chapter_names_every_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [path.relative_to(ROOT).as_posix() for path in sorted(PACKAGE.rglob("*.py"))
               if path.name != "__init__.py"
               and f"`{path.name}`" not in text and f"{path.parent.name}/{path.name}" not in text]
    assert missing == [], "docs/architecture.md's layer table does not name these modules"
    assert "```mermaid" in text, "the path of one message is drawn as a mermaid diagram"
