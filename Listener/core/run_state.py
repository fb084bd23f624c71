"""Where ``run()`` is: one object the run loop moves along, read by the parts that behave differently meanwhile.

The run loop (:class:`~Listener.pipeline.runner.Runner`) is the only writer. The pipeline reads it (a job
waits for a free slot, or for its retry, only during ``run()``), and so does the connection slot (a
connection of the listener's own is watched and dropped when it stalls only during ``run()``).
"""

from __future__ import annotations

import asyncio
import enum
from typing import Optional

__all__ = ["RunState", "State"]


class State(str, enum.Enum):
    """Where the run loop is."""

    #: ``run()`` has not been called yet.
    IDLE = "idle"
    #: Opening a connection, or waiting to retry.
    CONNECTING = "connecting"
    #: Connected and subscribed, taking messages.
    RUNNING = "running"
    #: ``stop()`` came: taking no new message, finishing the rest.
    DRAINING = "draining"
    #: ``run()`` returned (it may be called again).
    STOPPED = "stopped"


class RunState:
    """The run loop's :class:`State`, and the event ``stop()`` sets."""

    def __init__(self) -> None:
        self.state = State.IDLE
        #: Set by ``stop()``; a new one for each run (a stop before ``run()`` carries over to it).
        self.stop_requested = asyncio.Event()

    @property
    def active(self) -> bool:
        """True from ``run()`` until it returns."""
        return self.state not in (State.IDLE, State.STOPPED)

    @property
    def stopping(self) -> Optional[asyncio.Event]:
        """During ``run()``, the event ``stop()`` sets (jobs waiting to retry watch it); else None."""
        return self.stop_requested if self.active else None

    def stop_is_requested(self) -> bool:
        """Whether ``stop()`` came during this run."""
        return self.active and self.stop_requested.is_set()
