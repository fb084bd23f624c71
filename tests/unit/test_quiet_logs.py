"""amqtt's and transitions' INFO lines are quiet by default, unless the application chose their level."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, Iterator

import pytest

from Listener.ops.quiet_logs import NOISY_LOGGERS, quiet_third_party_loggers, restore_third_party_loggers


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def saved_levels() -> Iterator[Dict[str, int]]:
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    yield levels
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_only_loggers_nobody_configured_are_quietened() -> None:
    logging.getLogger("amqtt").setLevel(logging.NOTSET)
    logging.getLogger("transitions").setLevel(logging.DEBUG)  # the application's choice
    assert quiet_third_party_loggers() == ("amqtt",)
    assert logging.getLogger("amqtt").level == logging.WARNING
    assert logging.getLogger("transitions").level == logging.DEBUG


def test_restore_undoes_only_what_was_quietened() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    quiet_third_party_loggers()
    assert restore_third_party_loggers() == tuple(sorted(NOISY_LOGGERS))
    assert all(logging.getLogger(name).level == logging.NOTSET for name in NOISY_LOGGERS)
    assert restore_third_party_loggers() == ()


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,  # noqa: S603
                          timeout=60, cwd=str(ROOT))
    assert done.returncode == 0, done.stderr
    return done.stderr


NOISE = """
    import logging
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    {before}
    import Listener
    {after}
    for name in ("transitions.core", "amqtt.broker", "amqtt.client.plugins"):
        logging.getLogger(name).info("noise from %s", name)
        logging.getLogger(name).warning("warning from %s", name)
    logging.getLogger("Listener.event_listener").info("ours")
"""


@pytest.mark.unit
@pytest.mark.integration
def test_basicconfig_info_shows_our_lines_and_their_warnings_but_not_their_info() -> None:
    output = _run(NOISE.format(before="", after=""))
    assert "noise from" not in output
    assert output.count("warning from") == 3
    assert "Listener.event_listener INFO ours" in output


@pytest.mark.unit
@pytest.mark.integration
def test_a_level_set_before_the_import_is_respected() -> None:
    output = _run(NOISE.format(before='logging.getLogger("amqtt").setLevel(logging.INFO)', after=""))
    assert "noise from amqtt.broker" in output and "noise from amqtt.client.plugins" in output
    assert "noise from transitions.core" not in output


@pytest.mark.unit
@pytest.mark.integration
def test_the_documented_way_back_shows_them_again() -> None:
    restore = "from Listener.ops.quiet_logs import restore_third_party_loggers; restore_third_party_loggers()"
    output = _run(NOISE.format(before="", after=restore))
    assert output.count("noise from") == 3


LISTENER_WITH_EMBEDDED_BROKER = """
    import asyncio, logging, socket
    from amqtt.broker import Broker
    from amqtt.client import MQTTClient
    from Listener import EventListener, EventListenerConfig

    async def main():
        logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                         "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}})
        await broker.start()
        listener = EventListener(EventListenerConfig(host="127.0.0.1", port=port, username=None, password=None,
                                                     http_port=0))
        run = asyncio.create_task(listener.run(lambda data, job_id: {"ok": job_id}))
        await listener.wait_until_ready(10)
        client = MQTTClient("publisher", {"plugins": {}, "auto_reconnect": False})
        await client.connect(f"mqtt://127.0.0.1:{port}")
        await client.publish("test", b'job_id = "a"', qos=1)
        await client.disconnect()
        for _ in range(500):
            if await listener.is_job_completed("a"):
                break
            await asyncio.sleep(0.01)
        listener.stop()
        await asyncio.wait_for(run, 10)
        await broker.shutdown()

    asyncio.run(main())
"""


@pytest.mark.unit
@pytest.mark.integration
def test_a_listener_with_an_embedded_broker_logs_only_its_own_info_lines() -> None:
    output = _run(LISTENER_WITH_EMBEDDED_BROKER)
    info_lines = [line for line in output.splitlines() if " INFO " in line]
    assert info_lines, output
    assert all(line.startswith("Listener.") for line in info_lines), output
    assert "Job a completed" in output
    assert output.count("endpoints on http://") == 1, output
