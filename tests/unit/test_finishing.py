"""Unit tests for Listener.pipeline.finishing: a job whose result went out in the background is recorded in a
callback when nothing needs an await, else in a task; cancelled, it is recorded as cut short first."""

from __future__ import annotations

import asyncio
from typing import List, Optional

import pytest

from Listener.core.eager import EagerFuture
from Listener.pipeline.finishing import Finishing

pytestmark = pytest.mark.unit

#: The kind of ``sending`` future the tests of this module run with (see the ``sending_kind`` fixture).
_KIND = {"eager": False}


class Recorder:
    """``complete_now`` and ``complete`` as the pipeline gives them, noting what ran and what ``complete`` saw."""

    def __init__(self, sending: "asyncio.Future[Optional[str]]", now: bool = True) -> None:
        self.sending = sending
        self.now = now
        self.calls: List[str] = []
        self.release = asyncio.Event()
        self.release.set()

    def complete_now(self) -> bool:
        self.calls.append("now")
        return self.now

    async def complete(self) -> None:
        try:
            problem = await self.sending
        except asyncio.CancelledError:
            self.calls.append("cut short")
            raise
        await self.release.wait()
        self.calls.append(f"complete {problem}")

    def finishing(self) -> Finishing:
        return Finishing(self.sending, self.complete_now, self.complete, asyncio.get_running_loop())


@pytest.fixture(autouse=True, params=["plain", "eager"])
def sending_kind(request: pytest.FixtureRequest) -> None:
    """Every test twice: with a plain future for ``sending`` (a publication in a task), and with an eager one (the
    publisher's direct path, whose followers run the moment it is done)."""
    _KIND["eager"] = request.param == "eager"


def _sending() -> "asyncio.Future[Optional[str]]":
    if _KIND["eager"]:
        return EagerFuture(loop=asyncio.get_running_loop())
    return asyncio.get_running_loop().create_future()


async def test_an_acknowledged_result_is_recorded_in_a_callback() -> None:
    recorder = Recorder(_sending())
    finishing = recorder.finishing()
    recorder.sending.set_result(None)
    assert await asyncio.wait_for(finishing, 1) is None
    assert recorder.calls == ["now"]


@pytest.mark.parametrize("now, problem, calls", [(False, None, ["now", "complete None"]),
                                                 (True, "timed out", ["complete timed out"])])
async def test_what_needs_an_await_is_recorded_in_a_task(now: bool, problem: Optional[str], calls: List[str]) -> None:
    """The store's lock held (complete_now refuses), or a publication problem to report."""
    recorder = Recorder(_sending(), now=now)
    finishing = recorder.finishing()
    recorder.sending.set_result(problem)
    assert await asyncio.wait_for(finishing, 1) is None
    assert recorder.calls == calls


async def test_cancelled_while_the_result_is_on_its_way_the_job_is_recorded_cut_short_then_it_is_cancelled() -> None:
    recorder = Recorder(_sending())
    finishing = recorder.finishing()
    await asyncio.sleep(0)
    assert finishing.cancel()
    assert recorder.sending.cancelled()  # the publication is given up on
    assert not finishing.done()  # like a task: done once the job is recorded
    await asyncio.wait({finishing}, timeout=1)
    assert finishing.cancelled() and recorder.calls == ["cut short"]  # recorded once, by one task
    assert not finishing.cancel()


async def test_cancelled_while_recorded_in_a_task_that_task_is_cancelled() -> None:
    recorder = Recorder(_sending(), now=False)
    recorder.release.clear()
    finishing = recorder.finishing()
    recorder.sending.set_result(None)
    for _ in range(3):
        await asyncio.sleep(0)
    assert finishing.cancel()
    await asyncio.wait({finishing}, timeout=1)
    assert finishing.cancelled() and recorder.calls == ["now"]


async def test_a_failure_of_the_task_is_the_future_s() -> None:
    recorder = Recorder(_sending(), now=False)

    async def failing() -> None:
        raise RuntimeError("store said no")

    finishing = Finishing(recorder.sending, recorder.complete_now, failing, asyncio.get_running_loop())
    recorder.sending.set_result(None)
    with pytest.raises(RuntimeError, match="store said no"):
        await asyncio.wait_for(finishing, 1)
