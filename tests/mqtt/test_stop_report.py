"""The line logged when stop() drops received messages tells the truth about them (issue 23, item 5): which
were acknowledged (and lost, or recorded), which the broker redelivers, checked against real Mosquitto by
looking at what the next session with the same client id receives."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Set

import pytest

from tests.support.brokers import MqttProbe
from tests.support.listeners import job_finished
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)

JOBS = ["block"] + [f"queued-{i}" for i in range(5)]


def _stop_lines(caplog: pytest.LogCaptureFixture) -> List[logging.LogRecord]:
    return [r for r in caplog.records if "unprocessed when the listener stopped" in r.getMessage()]


async def _first_session(start_listener: Callable[..., Any], probe: Callable[..., MqttProbe], topic: str,
                         client_id: str, ack_policy: str, **options: Any) -> Set[str]:
    """A listener whose first job never ends, stopped with the others queued (grace 0.3 s): the jobs it started."""
    started: Set[str] = set()

    async def processor(data: Dict[str, Any], job_id: str) -> None:
        started.add(job_id)
        if job_id == "block":
            await asyncio.Event().wait()  # cancelled when the grace period ends

    listener, task = await start_listener(processor, client_id=client_id, cleansession=False, qos=1,
                                          ack_policy=ack_policy, shutdown_grace_period=0.3, **options)
    sender = probe()
    await asyncio.to_thread(lambda: [sender.publish(f"{topic}/jobs", f'job_id = "{job}"', qos=1) for job in JOBS])
    await eventually(lambda: "block" in started and listener.metrics()["queue_depth"] >= 1, 10, "block running")
    if ack_policy != "on_receipt":  # every one is queued, unacknowledged (the broker's window is 20)
        await eventually(lambda: listener.metrics()["queue_depth"] == len(JOBS) - 1, 10, "the others queued")
    listener.stop()
    await asyncio.wait_for(task, 10)
    return started


async def _second_session(start_listener: Callable[..., Any], probe: Callable[..., MqttProbe], topic: str,
                          client_id: str) -> Set[str]:
    """The next session with the same client id: the jobs the broker gives it before a new one, "sentinel"."""
    ran: Set[str] = set()

    async def processor(data: Dict[str, Any], job_id: str) -> None:
        ran.add(job_id)

    listener, _ = await start_listener(processor, client_id=client_id, cleansession=False, qos=1)
    await asyncio.to_thread(probe().publish, f"{topic}/jobs", 'job_id = "sentinel"', 1)
    await job_finished(listener, "sentinel")  # redelivered messages come first, one job at a time
    return ran - {"sentinel"}


@pytest.mark.parametrize("ack_policy", ["after_processing", "after_recording"])
async def test_held_acknowledgements_are_reported_as_redelivered_and_are(
        start_listener: Callable[..., Any], probe: Callable[..., MqttProbe], unique_topic: str,
        caplog: pytest.LogCaptureFixture, tmp_path: Path, ack_policy: str) -> None:
    """The 5 queued jobs dropped at stop were never acknowledged (with "after_recording" too: a queued message is not
    recorded yet). The line says the broker redelivers them (INFO: nothing is lost), and the next session does get
    all of them; with "after_recording" the job cut short was recorded and acknowledged: the broker keeps it no more
    (the store resumes it, not under test here)."""
    caplog.set_level(logging.INFO, logger="Listener")
    client_id = f"stop-held-{os.urandom(4).hex()}"
    store = f"sqlite:///{tmp_path / 'jobs.db'}" if ack_policy == "after_recording" else "memory"
    await _first_session(start_listener, probe, unique_topic, client_id, ack_policy, job_store=store)
    lines = _stop_lines(caplog)
    assert len(lines) == 1, [r.getMessage() for r in lines]
    text = lines[0].getMessage()
    assert re.search(r"Dropped 5 received message.*5 QoS 1/2 not acknowledged, which the broker redelivers", text), text
    assert "acknowledged (" not in text and "lost" not in text
    assert lines[0].levelno == logging.INFO
    expected = set(JOBS) - ({"block"} if ack_policy == "after_recording" else set())
    assert await _second_session(start_listener, probe, unique_topic, client_id) == expected


async def test_messages_acknowledged_on_receipt_are_reported_lost_and_are(
        start_listener: Callable[..., Any], probe: Callable[..., MqttProbe], unique_topic: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """ack_policy = "on_receipt": the queued job dropped at stop was acknowledged when queued. The line says it is
    lost (ERROR), and the next session gets every job except it and the running one (acknowledged too)."""
    caplog.set_level(logging.INFO, logger="Listener")
    client_id = f"stop-acked-{os.urandom(4).hex()}"
    started = await _first_session(start_listener, probe, unique_topic, client_id, "on_receipt")
    lines = _stop_lines(caplog)
    assert len(lines) == 1, [r.getMessage() for r in lines]
    text = lines[0].getMessage()
    match = re.search(r"Dropped (\d+) received message.*: (\d+) QoS 1/2 acknowledged \(ack_policy = 'on_receipt'\), "
                      r"lost$", text)
    assert match is not None and match.group(1) == match.group(2), text
    assert lines[0].levelno == logging.ERROR
    redelivered = await _second_session(start_listener, probe, unique_topic, client_id)
    never_again = set(JOBS) - started - redelivered
    assert len(never_again) == int(match.group(1)) >= 1, (started, redelivered)
