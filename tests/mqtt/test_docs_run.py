"""Docs that cannot rot: every ```python block of README.md and docs/*.md runs, and docs/api.md names every export.

A block defining ``test_…`` functions runs under pytest (the `listener` plugin, pytest-asyncio auto mode);
any other block runs as a program. Both get MQTT_HOST/MQTT_PORT of the test broker. A block preceded by the
line ``<!-- fragment -->`` is not run.
"""

from __future__ import annotations

import os
import re
import subprocess  # noqa: S404
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

import Listener
import Listener.testing
from Listener.testing import BrokerAddress


ROOT = Path(__file__).resolve().parent.parent.parent
FRAGMENT = "<!-- fragment -->"
TIMEOUT = 60


def python_blocks(root: Path = ROOT) -> List[Tuple[str, int, str]]:
    """``(file, line of the opening fence, code)`` of every python block not marked as a fragment."""
    blocks = []
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        lines = path.read_text(encoding="utf-8").splitlines()
        index = 0
        while index < len(lines):
            if lines[index].strip() == "```python":
                end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
                if not (index > 0 and lines[index - 1].strip() == FRAGMENT):
                    blocks.append((path.name, index + 1, "\n".join(lines[index + 1:end]) + "\n"))
                index = end
            index += 1
    return blocks


BLOCKS = python_blocks()


def test_the_docs_have_runnable_blocks() -> None:
    assert len([b for b in BLOCKS if b[0] == "testing.md"]) >= 3


@pytest.mark.parametrize("name, line, code", BLOCKS, ids=[f"{name}:{line}" for name, line, _ in BLOCKS])
def test_python_block_runs(name: str, line: int, code: str, mqtt_broker: BrokerAddress, tmp_path: Path) -> None:
    dropped = ("LISTENER_TEST_BROKER", "MQTT_USERNAME", "MQTT_PASSWORD", "PYTEST_ADDOPTS")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(MQTT_HOST=mqtt_broker.host, MQTT_PORT=str(mqtt_broker.port))
    if re.search(r"^(async )?def test_", code, re.MULTILINE):
        script = tmp_path / "test_block.py"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto",
                   "-o", "asyncio_default_fixture_loop_scope=function", str(script)]
    else:
        script = tmp_path / "block.py"
        command = [sys.executable, str(script)]
    script.write_text(code, encoding="utf-8")
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)  # noqa: S603
    assert done.returncode == 0, f"{name} line {line}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def test_api_reference_names_every_export() -> None:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    exported = list(Listener.__all__) + list(Listener.testing.__all__)
    missing = [name for name in exported if f"`{name}`" not in text]
    assert missing == []


def test_fragment_marker_is_honoured(tmp_path: Path) -> None:
    """The collector itself: a marked block is skipped, an unmarked one is kept."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("x\n<!-- fragment -->\n```python\nnot code\n```\n\n```python\nprint(1)\n```\n")
    assert python_blocks(tmp_path) == [("README.md", 7, "print(1)\n")]
