"""Done-when of the testing utilities: a user's test file passes where only the wheel and its [test] extra are installed.

Builds the wheel, installs it with ``[test]`` into a fresh venv (no dev tools, no source tree on the path) and
runs tests/support/sample_user_tests.py there with pytest: in memory, and against the plugin's broker.
"""

from __future__ import annotations

import os
import shutil
import subprocess  # noqa: S404
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent.parent


def run(*command: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)  # noqa: S603
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_user_tests_pass_with_the_wheel_and_its_test_extra(tmp_path: Path) -> None:
    dist, venv, user = tmp_path / "dist", tmp_path / "venv", tmp_path / "user"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT), cwd=tmp_path)
    wheel = next(dist.glob("*.whl"))
    run(sys.executable, "-m", "venv", str(venv), cwd=tmp_path)
    python = str(venv / "bin" / "python")
    run(python, "-m", "pip", "install", "-q", f"{wheel}[test]", cwd=tmp_path)
    user.mkdir()
    shutil.copyfile(ROOT / "tests" / "support" / "sample_user_tests.py", user / "test_user.py")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "LISTENER_TEST_BROKER")}
    output = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_default_fixture_loop_scope=function",
                 cwd=user, env=env)
    assert "2 passed" in output
    where = run(python, "-c", "import Listener; print(Listener.__file__)", cwd=user, env=env)
    assert str(venv) in where  # the installed wheel, not the source tree
