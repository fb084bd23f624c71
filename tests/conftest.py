"""Suite-wide set-up: the package's own pytest plugin, and the kind markers applied by directory.

The ``listener`` plugin is loaded here, after pytest-cov has started (see pytest.ini).

Each test gets the marker of its directory (``DIRECTORY_MARKERS``): ``tests/unit`` → ``unit``,
``tests/integration`` → ``integration``, ``tests/mqtt`` → ``mqtt_integration``, and ``tests/property`` →
``integration`` (the property suites drive a listener through a mocked or in-memory client, no broker), and
``tests/interop`` → ``interop`` (brokers this project did not write; part of ``make test``, alone ``make test-interop``).
A test that names its kind itself (``@pytest.mark.unit`` on a test in ``tests/mqtt`` that needs no broker)
keeps only the kinds it names. ``slow`` is never applied by directory: mark slow tests one by one.

Fixtures more than one directory uses live here; each directory's conftest.py adds its own (``tests/mqtt``: the
session's Mosquitto; ``tests/interop``: brokers this project did not write). Plain helpers live in ``tests/support``.
"""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

from tests.support.brokers import BrokerEndpoint
from tests.support.listener_processes import ListenerProcess

pytest_plugins = ["Listener.testing.pytest_plugin", "pytester"]

DIRECTORY_MARKERS = {"unit": "unit", "integration": "integration", "mqtt": "mqtt_integration",
                     "property": "integration", "interop": "interop"}
KINDS = frozenset(DIRECTORY_MARKERS.values())
_TESTS = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    """Add each test's directory marker unless it names its kind itself."""
    for item in items:
        if any(mark.name in KINDS for mark in item.iter_markers()):
            continue
        try:
            directory = item.path.relative_to(_TESTS).parts[0]
        except ValueError:  # a test outside this folder (pytester runs)
            continue
        marker = DIRECTORY_MARKERS.get(directory)
        if marker is not None:
            item.add_marker(marker)


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, put back afterwards: the CLI's main() and configure_logging() install handlers on it
    and change its level, and ``--log-level DEBUG`` turns amqtt's and transitions' loggers back on."""
    from Listener.ops.quiet_logs import NOISY_LOGGERS

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    third_party = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    for name, saved in third_party.items():
        logging.getLogger(name).setLevel(saved)


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> str:
    """A topic prefix of this test's own, so tests never see each other's traffic."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:60]
    return f"t/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def processes() -> Iterator[Callable[..., ListenerProcess]]:
    """``processes(endpoint, prefix, job_seconds=0.0, *options)``: a listener subprocess
    (tests/support/listener_program.py) on ``endpoint``; all killed afterwards."""
    made: List[ListenerProcess] = []

    def start(endpoint: BrokerEndpoint, prefix: str, job_seconds: float = 0.0, *options: str) -> ListenerProcess:
        process = ListenerProcess(endpoint, prefix, job_seconds, *options)
        made.append(process)
        return process

    try:
        yield start
    finally:
        for process in made:
            process.kill()
