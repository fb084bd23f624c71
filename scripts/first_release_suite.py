"""Run the first public release's own test suite, unmodified, against this package.

Usage::

    .venv/bin/python scripts/first_release_suite.py DIR [PYTEST_ARGS...]

DIR holds that suite: its ``tests/`` folder and its ``pytest.ini`` (and no ``Listener/`` folder, which
would be imported instead of this package). Get them from a clone of the first release's repository
with ``git archive HEAD tests pytest.ini | tar -x -C DIR``.

The script starts a mosquitto from docker/mosquitto/mosquitto.conf on free loopback ports, with the
accounts of docker/mosquitto/passwords, and gives the suite the environment it reads: ``MQTT_HOST``,
``MQTT_BROKER_PORT`` (the password listener), ``MQTT_USERNAME`` and ``MQTT_PASSWORD`` (user/password).
It then runs pytest in DIR with the suite's own ``pytest.ini``, replacing only its ``addopts``: the
coverage options (``--cov-fail-under=80`` measures that suite's coverage of this package, which is not
what is being checked) go, ``--strict-markers --strict-config --verbose`` stay, and each test gets a
timeout. Extra arguments go to pytest. The exit status is pytest's; the broker is killed on the way out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent
# First, even when the editable install lists it already (last): gmqtt's wheel (the dev extra) ships top-level
# ``tests`` and ``examples`` packages, which would shadow this repository's.
if str(ROOT) in sys.path:
    sys.path.remove(str(ROOT))
sys.path.insert(0, str(ROOT))

from tests.support.brokers import COMPOSE_PASSWORD_FILE, MosquittoBroker, session_folder  # noqa: E402

#: An account of docker/mosquitto/passwords (the first release's test defaults).
USERNAME, PASSWORD = "user", "password"
#: The suite's addopts without its coverage options.
ADDOPTS = "--strict-markers --strict-config --verbose"
TEST_TIMEOUT = 120


def suite_problem(folder: Path) -> str:
    """Why ``folder`` cannot be run as the first release's suite ("" when it can)."""
    if not (folder / "tests").is_dir() or not (folder / "pytest.ini").is_file():
        return f"{folder} does not hold a tests/ folder and a pytest.ini"
    if (folder / "Listener").exists():
        return (f"{folder} holds a Listener/ folder, which pytest would import instead of this package: "
                "extract only tests/ and pytest.ini")
    return ""


def pytest_command(folder: Path, extra: List[str]) -> List[str]:
    """The pytest command line run in ``folder``."""
    return [sys.executable, "-m", "pytest", "-c", str(folder / "pytest.ini"), "--rootdir", str(folder),
            "-o", f"addopts={ADDOPTS}", "-o", f"timeout={TEST_TIMEOUT}", "-p", "no:cacheprovider", *extra]


def main(argv: List[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    folder = Path(argv[0]).resolve()
    problem = suite_problem(folder)
    if problem:
        print(f"first_release_suite: {problem}", file=sys.stderr)
        return 2
    broker_folder = session_folder()
    broker = MosquittoBroker(broker_folder / "broker", username=USERNAME, password=PASSWORD,
                             password_file=COMPOSE_PASSWORD_FILE)
    try:
        broker.start()
        env = dict(os.environ, MQTT_HOST="127.0.0.1", MQTT_BROKER_PORT=str(broker.auth_port),
                   MQTT_USERNAME=USERNAME, MQTT_PASSWORD=PASSWORD)
        which = subprocess.run([sys.executable, "-c", "import Listener; print(Listener.__version__, Listener.__file__)"],
                               cwd=folder, env=env, capture_output=True, text=True, check=True)  # noqa: S603
        print(f"first_release_suite: mosquitto on 127.0.0.1:{broker.auth_port} (password listener); "
              f"Listener {which.stdout.strip()}; running the suite in {folder}", flush=True)
        return subprocess.run(pytest_command(folder, argv[1:]), cwd=folder, env=env).returncode  # noqa: S603
    finally:
        broker.kill()
        shutil.rmtree(broker_folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
