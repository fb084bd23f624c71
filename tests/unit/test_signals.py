"""Unit tests for Listener.ops.signals: the first signal drains, the second cancels, the old handlers come back."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any, Dict, List
from unittest.mock import MagicMock

from Listener import JobStatus
from Listener.ops.signals import StopSignals
from tests.support.mocked_listeners import mocked_listener


async def test_a_second_signal_cancels_the_running_job_at_once() -> None:
    listener = mocked_listener(shutdown_grace_period=30)
    messages: asyncio.Queue[Any] = asyncio.Queue()
    messages.put_nowait(MagicMock(topic="test/topic", data=bytearray(b'job_id = "stuck"')))
    listener.client.deliver_message.side_effect = messages.get
    started = asyncio.Event()
    after_second: List[int] = []

    async def processor(data: Dict[str, Any], job_id: str) -> None:
        started.set()
        await asyncio.Event().wait()

    previous = signal.getsignal(signal.SIGUSR1)
    handlers = listener.install_signal_handlers([signal.SIGUSR1], on_second_signal=lambda: after_second.append(1))
    assert handlers.signals == (signal.SIGUSR1,)
    run = asyncio.create_task(listener.run(processor))
    await asyncio.wait_for(started.wait(), 5)
    os.kill(os.getpid(), signal.SIGUSR1)
    await asyncio.sleep(0.05)
    assert listener.is_draining and not run.done()  # the first signal drains: the job keeps running
    os.kill(os.getpid(), signal.SIGUSR1)
    await asyncio.wait_for(run, 5)  # well within the 30 s grace period
    job = await listener.get_job_status("stuck")
    assert job is not None and job.status is JobStatus.FAILED and job.error == "Cancelled: listener stopped"
    assert after_second == [1] and handlers.received == 2 and handlers.exit_code == 128 + signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is previous  # removed with the run


def test_signal_handlers_put_the_previous_ones_back() -> None:
    loop = asyncio.new_event_loop()
    try:
        previous = signal.getsignal(signal.SIGUSR2)
        handlers = StopSignals(loop, lambda: None, lambda: None, [signal.SIGUSR2], exit_after=60.0)
        assert signal.getsignal(signal.SIGUSR2) is not previous
        handlers.remove()
        assert signal.getsignal(signal.SIGUSR2) is previous and handlers.signals == ()
    finally:
        loop.close()
