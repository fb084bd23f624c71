"""Listeners in subprocesses, for the tests that kill or signal them, with their output collected by threads.

:class:`ListenerProcess` runs the test program ``tests/support/listener_program.py``; :class:`CliProcess` runs the
``mqtt-listener`` command line (``python -m Listener``), configured with :func:`connection_options` and
:func:`topic_options`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List

from tests.support.brokers import BrokerEndpoint

#: The repository's root: the working directory of the subprocesses, and what goes on their PYTHONPATH.
ROOT = Path(__file__).resolve().parents[2]
#: How long :class:`CliProcess` waits for a log event by default, and for the process to exit.
EVENT_TIMEOUT = 20.0
EXIT_TIMEOUT = 20.0


class ListenerProcess:
    """A listener subprocess (tests/support/listener_program.py) whose output lines are collected by threads."""

    def __init__(self, endpoint: BrokerEndpoint, prefix: str, job_seconds: float = 0.0, *options: str) -> None:
        self.lines: List[str] = []
        self.errors: List[str] = []
        self._condition = threading.Condition()
        self.process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "tests.support.listener_program", endpoint.host, str(endpoint.port), prefix,
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


class CliProcess:
    """``python -m Listener ARGS`` with its stdout and stderr collected line by line on threads."""

    def __init__(self, args: List[str], env: Dict[str, str]) -> None:
        self.args = args
        self.lines: List[str] = []
        self.stdout: List[str] = []
        self._condition = threading.Condition()
        self.process = subprocess.Popen([sys.executable, "-m", "Listener", *args], env=env,  # noqa: S603
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
        self._threads = [threading.Thread(target=self._pump, args=(self.process.stderr, self.lines), daemon=True),
                         threading.Thread(target=self._pump, args=(self.process.stdout, self.stdout), daemon=True)]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream: Any, into: List[str]) -> None:
        for line in stream:
            with self._condition:
                into.append(line.rstrip("\n"))
                self._condition.notify_all()

    def events(self) -> List[Dict[str, Any]]:
        """The JSON log lines written so far."""
        with self._condition:
            lines = list(self.lines)
        found = []
        for line in lines:
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found

    def wait_for_event(self, event: str, timeout: float = EVENT_TIMEOUT) -> Dict[str, Any]:
        """Block until a JSON log line with ``"event": event`` appears (or the process ends)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                for body in self.events():
                    if body.get("event") == event:
                        return body
                if self.process.poll() is not None:
                    raise AssertionError(f"mqtt-listener exited ({self.process.returncode}) before {event!r}:\n"
                                         + self.output())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {event!r} log event within {timeout} s:\n{self.output()}")
                self._condition.wait(min(remaining, 0.2))

    def wait_for_message(self, text: str, timeout: float = EVENT_TIMEOUT) -> Dict[str, Any]:
        """Block until a JSON log line whose message contains ``text`` appears."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                for body in self.events():
                    if text in str(body.get("message", "")):
                        return body
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"no log message with {text!r}:\n{self.output()}")
                self._condition.wait(min(remaining, 0.2))

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        """The exit code, once the process ended and its output was read to the end."""
        code = self.process.wait(timeout)
        for thread in self._threads:
            thread.join(5)
        return code

    def output(self) -> str:
        """Everything printed so far, stdout first."""
        with self._condition:
            return "\n".join(self.stdout + self.lines)

    def kill(self) -> None:
        """SIGKILL (idempotent) and reap."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def connection_options(endpoint: BrokerEndpoint) -> List[str]:
    """``--set``/``--unset`` options for ``endpoint``'s address and credentials (none when it has no user)."""
    options = ["--set", f"host={endpoint.host}", "--set", f"port={endpoint.port}"]
    if endpoint.username is None:
        options += ["--unset", "username", "--unset", "password"]
    else:
        options += ["--set", f"username={endpoint.username}", "--set", f"password={endpoint.password}"]
    return options


def topic_options(prefix: str) -> List[str]:
    """``--set`` options putting every topic under ``prefix``, with a fresh client id, QoS 1 and no reconnects."""
    return ["--set", f"topic={prefix}/jobs", "--set", f"results_topic={prefix}/results",
            "--set", f"error_topic={prefix}/error", "--set", f"log_topic={prefix}/log",
            "--set", f"client_id=cli-{uuid.uuid4().hex[:10]}", "--set", "qos=1", "--set", "reconnect_retries=0",
            "--set", "connect_timeout=5"]
