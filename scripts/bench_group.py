"""The scaling scenarios of ``scripts/bench.py``: the listener as ``mqtt-listener run`` processes.

A scenario with ``processes = 1`` runs ``python -m Listener run bench_group:<processor>`` (one process, as
a service runs it); with ``processes = N > 1`` it adds ``--workers N`` (a supervisor and N workers in one
share group). Settings go on the command line with ``--set``, the password (if any) in ``MQTT_PASSWORD``.
Readiness is the group's ``/readyz``; CPU is the supervisor's plus every worker's.

This module is also where the workers import their processor from (``bench_group:sync5``), so it imports
nothing from the listener at module level.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["ListenerGroup", "sync5", "trivial"]

SCRIPTS = Path(__file__).resolve().parent
READY_POLL = 0.1


def trivial(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
    """Echo the job id and send time (the collector computes latency from it)."""
    return {"job_id": job_id, "sent": data.get("sent")}


def sync5(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
    """A plain ``def`` processor that takes 5 ms (waiting on I/O, say), then echoes like :func:`trivial`."""
    time.sleep(0.005)
    return {"job_id": job_id, "sent": data.get("sent")}


def _toml_text(value: Any) -> str:
    """A ``--set`` value: numbers as they are, text as a TOML string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class ListenerGroup:
    """One ``mqtt-listener run`` process (with ``--workers`` when ``processes`` > 1), started and stopped."""

    def __init__(self, processor: str, processes: int, settings: Dict[str, Any], http_port: int,
                 password: Optional[str], cwd: Path) -> None:
        self.processes = processes
        self.http_port = http_port
        self.command = [sys.executable, "-m", "Listener", "run", f"bench_group:{processor}", "--log-level", "WARNING"]
        if processes > 1:
            self.command += ["--workers", str(processes)]
        for key, value in {**settings, "http_port": http_port}.items():
            if value is None:
                self.command += ["--unset", key]
            else:
                self.command += ["--set", f"{key}={_toml_text(value)}"]
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SCRIPTS), self.env.get("PYTHONPATH", "")) if p)
        self.env.pop("MQTT_PASSWORD", None)
        if password is not None:
            self.env["MQTT_PASSWORD"] = password
        self.cwd = cwd
        self.proc: Optional[asyncio.subprocess.Process] = None

    async def start(self, timeout: float) -> None:
        """Start the process and wait (at most ``timeout`` s) until ``/readyz`` answers 200."""
        self.proc = await asyncio.create_subprocess_exec(*self.command, cwd=str(self.cwd), env=self.env,
                                                         stdin=asyncio.subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(self._ready):
            if self.proc.returncode is not None:
                raise RuntimeError(f"mqtt-listener run exited with code {self.proc.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mqtt-listener run was not ready within {timeout:g} s")
            await asyncio.sleep(READY_POLL)

    def _ready(self) -> bool:
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as answer:  # noqa: S310 - our own loopback endpoint
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def cpu_seconds(self) -> float:
        """CPU time used so far by the process and its workers (workers that exited are not counted)."""
        import psutil

        if self.proc is None:
            return 0.0
        try:
            parent = psutil.Process(self.proc.pid)
            members: List[Any] = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for member in members:
            try:
                times = member.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    async def stop(self, timeout: float) -> Optional[int]:
        """SIGTERM (the workers drain), then SIGKILL after ``timeout`` s; the exit code."""
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            self.proc.kill()
            return await self.proc.wait()
