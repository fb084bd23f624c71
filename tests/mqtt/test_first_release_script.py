"""scripts/first_release_suite.py, on a stand-in for the first release's suite: the same layout (tests/ and a
pytest.ini with coverage options), the same environment variables, a listener that must authenticate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "first_release_suite.py"

PYTEST_INI = """[pytest]
testpaths = tests
addopts =
    --strict-markers
    --cov=Listener
    --cov-fail-under=80
asyncio_mode = auto
"""

STAND_IN_TEST = '''
import os

from Listener.event_listener import EventListener, EventListenerConfig


async def test_a_listener_authenticates_with_the_environment():
    host, port = os.environ["MQTT_HOST"], int(os.environ["MQTT_BROKER_PORT"])
    user, password = os.environ["MQTT_USERNAME"], os.environ["MQTT_PASSWORD"]
    listener = EventListener(EventListenerConfig(host=host, port=port, uri=f"mqtt://{user}:{password}@{host}:{port}",
                                                 username=user, password=password, connect_timeout=5,
                                                 reconnect_retries=0))
    await listener._connect()
    await listener._disconnect()


async def test_the_password_listener_refuses_anonymous_clients():
    host, port = os.environ["MQTT_HOST"], int(os.environ["MQTT_BROKER_PORT"])
    listener = EventListener(EventListenerConfig(host=host, port=port, username="", connect_timeout=5,
                                                 reconnect_retries=0))
    try:
        await listener._connect()
    except ConnectionError:
        return
    await listener._disconnect()
    raise AssertionError("an anonymous client was let in")
'''


def make_suite(folder: Path) -> Path:
    (folder / "tests").mkdir(parents=True)
    (folder / "tests" / "__init__.py").write_text("", encoding="utf-8")
    (folder / "tests" / "test_stand_in.py").write_text(STAND_IN_TEST, encoding="utf-8")
    (folder / "pytest.ini").write_text(PYTEST_INI, encoding="utf-8")
    return folder


def run_script(folder: Path) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, str(SCRIPT), str(folder), "-q"], capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_script_runs_a_suite_against_the_password_listener_without_its_coverage_options(tmp_path: Path) -> None:
    done = run_script(make_suite(tmp_path / "suite"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
    assert "password listener" in done.stdout and str(ROOT / "Listener") in done.stdout


def test_the_script_refuses_a_folder_whose_listener_would_shadow_this_package(tmp_path: Path) -> None:
    suite = make_suite(tmp_path / "suite")
    (suite / "Listener").mkdir()
    done = run_script(suite)
    assert done.returncode == 2 and "Listener/ folder" in done.stderr
    done = run_script(tmp_path / "empty")
    assert done.returncode == 2 and "does not hold a tests/ folder" in done.stderr
