"""The commands of the Installation and Quick start chapters, run as written, so the docs cannot drift from what works.

Each block after a ``<!-- tested: NAME -->`` line (an optional ``<!-- fragment -->`` line between them) is
taken verbatim. The ```bash blocks of docs/installation.md run in a fresh virtual environment (no
``--system-site-packages``), in a temporary ``git clone`` of this repository, with the environment's ``bin``
first on PATH (what ``. .venv/bin/activate`` does) and ``/path/to/clone`` standing for that clone; then
``import Listener`` and ``mqtt-listener --help`` must work from outside the clone. Step 2 of
docs/quickstart.md (``jobs.py``, ``mqtt-listener run … --embedded-broker``, ``mqtt-listener publish``) runs with
the package the wheel block installed. Dependencies come from the package index, as for a user; every command
is bounded by a timeout. Also checked: docs/testing.md's pytest.ini makes pytest-asyncio give no deprecation warning.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess  # noqa: S404
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

import Listener
from tests.support.brokers import BrokerEndpoint, MqttProbe, free_port

ROOT = Path(__file__).resolve().parent.parent.parent
INSTALLATION = ROOT / "docs" / "installation.md"
QUICKSTART = ROOT / "docs" / "quickstart.md"
TESTING = ROOT / "docs" / "testing.md"
MARKER = re.compile(r"^<!-- tested: ([\w.-]+) -->$")
CLONE_PLACEHOLDER = "/path/to/clone"
#: Seconds one documented command may take (a build or an install with its dependencies from the index).
COMMAND_TIMEOUT = 240
#: Seconds the quick start's service may take to start, and to stop after SIGINT.
SERVICE_TIMEOUT = 30

Venv = Tuple[Path, Dict[str, str]]


def marked_blocks(text: str) -> Dict[str, str]:
    """``{name: code}``: the fenced block right after each ``<!-- tested: name -->`` line."""
    lines = text.splitlines()
    blocks: Dict[str, str] = {}
    for index, line in enumerate(lines):
        marker = MARKER.match(line.strip())
        if marker is None:
            continue
        start = index + 1
        if lines[start].strip() == "<!-- fragment -->":
            start += 1
        assert lines[start].startswith("```"), f"{marker.group(1)}: the marker must precede a fenced block"
        end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "```")
        blocks[marker.group(1)] = "\n".join(lines[start + 1:end]) + "\n"
    return blocks


INSTALL_BLOCKS = marked_blocks(INSTALLATION.read_text(encoding="utf-8"))
QUICKSTART_BLOCKS = marked_blocks(QUICKSTART.read_text(encoding="utf-8"))


def run(command: List[str], cwd: Path, env: Dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,  # noqa: S603
                          timeout=COMMAND_TIMEOUT)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def bash(script: str, cwd: Path, env: Dict[str, str]) -> str:
    """Run a documented block as one bash script that stops at the first failing command."""
    return run(["bash", "-e", "-c", script], cwd=cwd, env=env)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``git clone`` of this repository (its committed files, as pip's git+file:// sees them)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of the repository")
    target = tmp_path_factory.mktemp("install") / "clone"
    run(["git", "clone", "--quiet", str(ROOT), str(target)], cwd=target.parent, env=dict(os.environ))
    return target


def fresh_venv(where: Path) -> Dict[str, str]:
    """A new virtual environment at ``where``; the environment variables of a shell that activated it."""
    run([sys.executable, "-m", "venv", str(where)], cwd=where.parent, env=dict(os.environ))
    dropped = ("PYTHONPATH", "PYTHONHOME", "PYTEST_ADDOPTS", "PIP_USER", "PIP_TARGET", "PIP_PREFIX")
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("MQTT_")}
    env.update(VIRTUAL_ENV=str(where), PATH=f"{where / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def install_block(name: str, clone: Path, env: Dict[str, str]) -> None:
    assert INSTALL_BLOCKS.get(name), f"docs/installation.md has no block after <!-- tested: {name} -->"
    bash(INSTALL_BLOCKS[name].replace(CLONE_PLACEHOLDER, str(clone)), cwd=clone, env=env)


def check_installed(venv: Path, env: Dict[str, str], elsewhere: Path) -> None:
    """The installed package (not a source tree) imports with this version, and its command answers --help."""
    shown = run([str(venv / "bin" / "python"), "-c", "import Listener; print(Listener.__version__, Listener.__file__)"],
                cwd=elsewhere, env=env).split()
    assert shown[0] == Listener.__version__
    assert shown[1].startswith(str(venv))
    usage = run(["mqtt-listener", "--help"], cwd=elsewhere, env=env)
    assert "run" in usage and "check-config" in usage


@pytest.fixture(scope="module")
def wheel_venv(clone: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh venv with the package installed by the chapter's wheel commands."""
    venv = tmp_path_factory.mktemp("wheel") / "venv"
    env = fresh_venv(venv)
    install_block("wheel", clone, env)
    return venv, env


def test_the_chapters_mark_their_tested_commands() -> None:
    assert "python -m build" in INSTALL_BLOCKS["wheel"] and "pip install dist/*.whl" in INSTALL_BLOCKS["wheel"]
    assert f"git+file://{CLONE_PLACEHOLDER}'" in INSTALL_BLOCKS["git-url"] and "[redis]" in INSTALL_BLOCKS["git-url"]
    assert set(QUICKSTART_BLOCKS) >= {"jobs.py", "run", "publish"}


@pytest.mark.slow
def test_the_wheel_install_works_in_a_fresh_venv(wheel_venv: Venv, tmp_path: Path) -> None:
    check_installed(*wheel_venv, tmp_path)


@pytest.mark.slow
def test_the_git_url_install_with_an_extra_works_in_a_fresh_venv(clone: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    env = fresh_venv(venv)
    install_block("git-url", clone, env)
    check_installed(venv, env, tmp_path)
    run([str(venv / "bin" / "python"), "-c", "import redis"], cwd=tmp_path, env=env)  # the [redis] extra came too


@pytest.fixture
def quickstart_service(wheel_venv: Venv, tmp_path: Path) -> Iterator[Tuple["subprocess.Popen[bytes]", Path, int]]:
    """The quick start's ``jobs.py`` and ``mqtt-listener run`` command, on a free port (``MQTT_PORT``, which the
    documented commands do not override); stopped with SIGINT, as Ctrl-C would, if the test did not."""
    _, env = wheel_venv
    port = free_port()
    (tmp_path / "jobs.py").write_text(QUICKSTART_BLOCKS["jobs.py"], encoding="utf-8")
    log = tmp_path / "run.log"
    with open(log, "wb") as output:
        service = subprocess.Popen(["bash", "-e", "-c", QUICKSTART_BLOCKS["run"]], cwd=tmp_path,  # noqa: S603
                                   env={**env, "MQTT_PORT": str(port)}, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield service, log, port
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait(SERVICE_TIMEOUT)


def wait_for_line(log: Path, text: str, service: "subprocess.Popen[bytes]") -> None:
    deadline = time.monotonic() + SERVICE_TIMEOUT
    while text not in log.read_text(encoding="utf-8", errors="replace"):
        assert service.poll() is None, f"the service ended ({service.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} within {SERVICE_TIMEOUT} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


@pytest.mark.slow
def test_the_quick_start_service_takes_a_job_published_as_shown(
        wheel_venv: Venv, quickstart_service: Tuple["subprocess.Popen[bytes]", Path, int], tmp_path: Path) -> None:
    _, env = wheel_venv
    service, log, port = quickstart_service
    wait_for_line(log, "Listener started", service)
    watcher = MqttProbe(BrokerEndpoint("127.0.0.1", port))
    try:
        watcher.subscribe("quickstart/#")
        published = bash(QUICKSTART_BLOCKS["publish"], cwd=tmp_path, env={**env, "MQTT_PORT": str(port)})
        assert "Published 28 bytes to 'quickstart/jobs' (QoS 1)" in published
        result = watcher.wait_for(1, 10.0, "quickstart/results")[0]
    finally:
        watcher.close()
    assert json.loads(result.payload) == {"job_id": "qs-1", "greeting": "hello, Ada"}
    os.killpg(service.pid, signal.SIGINT)
    assert service.wait(SERVICE_TIMEOUT) == 0, log.read_text()[-3000:]
    assert "Job qs-1 completed" in log.read_text()


def test_the_pytest_ini_of_the_testing_chapter_gives_no_deprecation_warning(tmp_path: Path) -> None:
    """pytest-asyncio warns (PytestDeprecationWarning) when asyncio_default_fixture_loop_scope is unset."""
    found = re.search(r"^```ini\n(# pytest\.ini\n.*?)^```$", TESTING.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    assert found is not None, "docs/testing.md shows no ```ini block starting with '# pytest.ini'"
    (tmp_path / "pytest.ini").write_text(found.group(1), encoding="utf-8")
    (tmp_path / "test_user.py").write_text("async def test_async_needs_no_marker():\n    pass\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTHONPATH")}
    output = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                  "-W", "error::pytest.PytestDeprecationWarning", "-W", "error::DeprecationWarning:pytest_asyncio"],
                 cwd=tmp_path, env=env)
    assert "1 passed" in output


def test_only_the_marked_blocks_are_read() -> None:
    text = ("```bash\nnot this\n```\n<!-- tested: one -->\n```bash\npip install a\n```\n"
            "<!-- tested: two.py -->\n<!-- fragment -->\n```python\nx = 1\n```\n")
    assert marked_blocks(text) == {"one": "pip install a\n", "two.py": "x = 1\n"}
