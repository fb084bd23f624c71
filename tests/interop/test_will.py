"""The will message on every broker of the tier: published when the listener's connection ends without a
DISCONNECT (its process SIGKILLed), never after a clean stop. Listener processes: tests/support/listener_program.py
(will ``listener_offline`` on ``<prefix>/status`` at QoS 1)."""

from __future__ import annotations

import asyncio
import signal
from typing import Callable

import pytest

from tests.support.brokers import MqttProbe
from tests.support.interop_brokers import InteropBroker
from tests.support.job_messages import publish_jobs, results_for
from tests.support.listener_processes import ListenerProcess

pytestmark = pytest.mark.timeout(90)


async def test_the_will_is_published_when_the_listener_is_killed_and_not_after_a_clean_stop(
        interop_broker: InteropBroker, processes: Callable[..., ListenerProcess],
        probe: Callable[..., MqttProbe], unique_topic: str) -> None:
    assert interop_broker.traits.will  # every broker of the tier publishes wills
    status, results, fence = f"{unique_topic}/status", f"{unique_topic}/results", f"{unique_topic}/fence"
    watcher = probe(interop_broker.endpoint, status, results, fence, qos=1)
    sender = probe(interop_broker.endpoint)

    stopped = processes(interop_broker.endpoint, unique_topic, 0.0, "--signals")
    await asyncio.to_thread(stopped.wait_line, "READY", 30)
    await publish_jobs(sender, f"{unique_topic}/jobs", ["before-stop"])
    await results_for(watcher, results, ["before-stop"])
    stopped.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(stopped.wait_line, "EXITED", 30)
    assert await asyncio.to_thread(stopped.process.wait, 10) == 0
    # run() returned after the broker closed the connection it had sent DISCONNECT on: a will would be out already.
    await asyncio.to_thread(sender.publish, fence, b"fence", 1)
    await asyncio.to_thread(watcher.wait_for, 1, 10, fence)
    assert watcher.messages(status) == []

    killed = processes(interop_broker.endpoint, unique_topic)
    await asyncio.to_thread(killed.wait_line, "READY", 30)
    await publish_jobs(sender, f"{unique_topic}/jobs", ["before-kill"])
    await results_for(watcher, results, ["before-kill"])
    assert watcher.messages(status) == []
    killed.kill()
    [will] = await asyncio.to_thread(watcher.wait_for, 1, 20, status)
    assert will.payload == b"listener_offline" and not will.retain
