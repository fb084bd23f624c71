"""The docs cite what exists: every test file and test they name, and every ``Listener.…`` module or attribute.

Read: docs/*.md, README.md and the [Unreleased] section of CHANGELOG.md (released sections describe the tree as
it was then). A test is cited as ``tests/<dir>/test_x.py``, optionally followed by ``::test_name`` (with
``[param]`` or ``[*]``); in tables the file may be shortened to ``test_x.py::test_name`` when one file under
tests/ has that name, and further tests of the same file follow as ``::test_other`` in the same paragraph or
table row.
Each ``Listener.a.b`` in inline code of docs/*.md and README.md must import (its longest module prefix) and
resolve (the rest, attribute by attribute).
"""

from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"

#: ``tests/…/x.py`` or ``test_x.py``, then ``::name`` parts; or a bare ``::name`` continuing the last file cited.
_CITATION = re.compile(r"(?P<file>\btests/[\w/]+\.py|(?<![\w/])test_\w+\.py)(?P<tests>(?:::\w+(?:\[[^\]\s`]*\])?)*)"
                       r"|(?<![\w.:])(?P<more>::test\w*(?:\[[^\]\s`]*\])?(?:::\w+(?:\[[^\]\s`]*\])?)*)")
_TEST_NAME = re.compile(r"::(\w+)")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
#: A dotted name that starts with the package: ``Listener.core.topics.topic_name_error``.
_DOTTED = re.compile(r"(?<![\w.])Listener(?:\.\w+)+")
#: Names of the library's loggers (``logging.getLogger(...)``) that are not module paths: skipped on a line that
#: talks about loggers, checked like any other name elsewhere.
LOGGER_NAMES = frozenset({
    "Listener.http_endpoints",  # Listener/ops/http_endpoints.py
    "Listener.signals",  # Listener/ops/signals.py
})


@dataclass(frozen=True)
class Citation:
    doc: str
    line: int
    file: str
    test: Optional[str] = None


def documents() -> Dict[str, str]:
    """Name → text of every document read."""
    texts = {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8") for path in sorted((ROOT / "docs").glob("*.md"))}
    texts["README.md"] = (ROOT / "README.md").read_text(encoding="utf-8")
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    unreleased = re.search(r"^## \[Unreleased\]\n(.*?)(?=^## \[)", changelog, re.S | re.M)
    if unreleased is not None:
        texts["CHANGELOG.md [Unreleased]"] = unreleased.group(1)
    return texts


@lru_cache(maxsize=None)
def files_under_tests_named(name: str) -> List[str]:
    """Every file under tests/ called ``name``, relative to the repository."""
    return sorted(str(path.relative_to(ROOT)) for path in TESTS.rglob(name) if "node_modules" not in path.parts)


def citations(doc: str, text: str) -> Iterator[Citation]:
    """Each test file cited, and each test (once per ``::name``)."""
    current: Optional[str] = None  # a bare ::test_name belongs to the last file cited in its paragraph or table row
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("|"):
            current = None
        for match in _CITATION.finditer(line):
            if match.group("file"):
                cited = match.group("file")
                if cited.startswith("tests/"):
                    current = cited
                else:
                    found = files_under_tests_named(cited)
                    current = found[0] if len(found) == 1 else f"{cited} (one of {len(found)} files under tests/)"
                yield Citation(doc, number, current)
                names = match.group("tests")
            else:
                names = match.group("more")
                if current is None:
                    for name in _TEST_NAME.findall(names):
                        yield Citation(doc, number, "(no file cited before it in its paragraph or table row)", name)
                    continue
            for name in _TEST_NAME.findall(names):
                yield Citation(doc, number, current, name)


@lru_cache(maxsize=None)
def defined_tests(relative: str) -> Set[str]:
    """Names of the functions defined in a test file, at module level or in its classes."""
    tree = ast.parse((ROOT / relative).read_text(encoding="utf-8"))
    found: Set[str] = set()
    for node in tree.body:
        nodes = node.body if isinstance(node, ast.ClassDef) else [node]
        found.update(item.name for item in nodes if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return found


def all_citations() -> List[Citation]:
    return [citation for doc, text in documents().items() for citation in citations(doc, text)]


def test_every_cited_test_file_exists() -> None:
    missing = sorted({f"{c.doc}:{c.line}: {c.file}" for c in all_citations() if not (ROOT / c.file).is_file()})
    assert missing == []


def test_every_cited_test_is_defined_in_its_file() -> None:
    missing = sorted({f"{c.doc}:{c.line}: {c.file}::{c.test}" for c in all_citations()
                      if c.test is not None and (ROOT / c.file).is_file() and c.test not in defined_tests(c.file)})
    assert missing == []


def test_citations_are_found() -> None:
    """The parser itself: full paths, shortened file names, continuations, parameters."""
    text = ("`tests/unit/test_config.py::test_a[x-1]`, `::test_b`; `test_faults.py::test_c[*]` and\n"
            "`tests/property/test_result_topics.py`, on `::1` too, and `::test_d`.\n"
            "\n"
            "| `::test_e` | `test_faults.py` |")
    found = list(citations("doc", text))
    assert [(c.line, c.file, c.test) for c in found] == [
        (1, "tests/unit/test_config.py", None), (1, "tests/unit/test_config.py", "test_a"),
        (1, "tests/unit/test_config.py", "test_b"), (1, "tests/mqtt/test_faults.py", None),
        (1, "tests/mqtt/test_faults.py", "test_c"), (2, "tests/property/test_result_topics.py", None),
        (2, "tests/property/test_result_topics.py", "test_d"),
        (4, "(no file cited before it in its paragraph or table row)", "test_e"), (4, "tests/mqtt/test_faults.py", None)]


def resolve(dotted: str) -> Optional[str]:
    """None when ``dotted`` names a module or an attribute of one; else what is wrong."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        module_name = ".".join(parts[:end])
        try:
            target: object = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and (module_name + ".").startswith(error.name + "."):
                continue  # no such module (or package): try the name one part shorter
            raise  # the module exists but imports something that does not
        for attribute in parts[end:]:
            if not hasattr(target, attribute):
                return f"{module_name} has no {'.'.join(parts[end:])}"
            target = getattr(target, attribute)
        return None
    return "no such module"


def test_every_dotted_listener_name_resolves() -> None:
    unresolved = []
    for doc, text in documents().items():
        if doc.startswith("CHANGELOG"):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for dotted in (name for code in _INLINE_CODE.findall(line) for name in _DOTTED.findall(code)):
                if dotted in LOGGER_NAMES and "logger" in line.lower():
                    continue
                problem = resolve(dotted)
                if problem is not None:
                    unresolved.append(f"{doc}:{number}: {dotted}: {problem}")
    assert unresolved == []


#: A file of the package named by its path: ``Listener/mqtt/wire_handler.py``.
_PACKAGE_PATH = re.compile(r"(?<![\w/])Listener/[\w/]+\.py\b")


def test_every_package_file_named_in_the_docs_exists() -> None:
    missing = [f"{doc}: {path}" for doc, text in documents().items() for path in _PACKAGE_PATH.findall(text)
               if not (ROOT / path).is_file()]
    assert missing == []
