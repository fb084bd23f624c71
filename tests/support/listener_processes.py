"""Listener subprocesses (tests/mqtt/listener_process.py) for the tests that kill or signal them."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, List

from tests.support.brokers import BrokerEndpoint

ROOT = Path(__file__).resolve().parents[2]


class ListenerProcess:
    """A listener subprocess (tests/mqtt/listener_process.py) whose output lines are collected by threads."""

    def __init__(self, endpoint: BrokerEndpoint, prefix: str, job_seconds: float = 0.0, *options: str) -> None:
        self.lines: List[str] = []
        self.errors: List[str] = []
        self._condition = threading.Condition()
        self.process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "tests.mqtt.listener_process", endpoint.host, str(endpoint.port), prefix,
             str(job_seconds), *options],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, args=(self.process.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.process.stderr, self.errors), daemon=True).start()

    def _read(self, stream: Any, into: List[str]) -> None:
        for line in stream:
            with self._condition:
                into.append(line.rstrip("\n"))
                self._condition.notify_all()

    def wait_line(self, line: str, timeout: float = 20.0) -> None:
        """Block until the process printed ``line``; AssertionError (with its stderr) after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while line not in self.lines:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and line not in self.lines):
                    raise AssertionError(f"no {line!r} from the listener process; stdout {self.lines}, "
                                         f"stderr {self.errors[-20:]}")
                self._condition.wait(min(remaining, 0.2))

    def started_jobs(self) -> List[str]:
        """Job ids the processor started, in order."""
        with self._condition:
            return [line.split(" ", 1)[1] for line in self.lines if line.startswith("STARTED ")]

    def kill(self) -> None:
        """SIGKILL (idempotent) and reap."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
