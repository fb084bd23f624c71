"""``mqtt-listener run --workers N``: N listener processes in one shared subscription group, kept running.

The parent process only supervises. Each worker is ``python -m Listener.cli.group_worker``, started in its own
session (a Ctrl-C in the terminal reaches the parent alone, which forwards it once). Its settings arrive on
its stdin as one JSON line (never on a command line, where other local users could read a password), and the
pipe stays open: when the parent disappears, the worker sees end-of-file and drains. Each worker reports its
state (ready, draining, metrics) on a second pipe every :data:`STATUS_PERIOD` seconds; the parent's HTTP
endpoints answer for the group from those reports (:mod:`Listener.cli.group_status`).

Restarts: a worker that exits while the group is not stopping is started again after a backoff
(:func:`Listener.core.backoff.backoff_delay`, from :data:`RESTART_BASE` doubling up to :data:`RESTART_CAP`
seconds). A worker that exits with the usage-error code 2 (an invalid configuration, a ``share_group`` the
broker does not apply) is not restarted: the group stops and the parent exits 2 too. One that fails
:data:`MAX_QUICK_FAILURES` times in a row each within :data:`QUICK_EXIT_SECONDS` of its start (bad
credentials, a broker refusing it) is not restarted again either: the group stops and the parent exits 1.

Signals: the first SIGTERM/SIGINT is forwarded to every worker (each finishes its jobs in flight); a second
is forwarded again (each stops at once). The parent exits 0 when every worker exited 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Dict, List, Optional

from ..config.settings import EventListenerConfig
from ..core.backoff import backoff_delay
from ..core.topics import share_group_error
from .exit_codes import CliError
from .group_status import add_counters

__all__ = ["MAX_QUICK_FAILURES", "QUICK_EXIT_SECONDS", "RESTART_BASE", "RESTART_CAP", "STATUS_PERIOD", "Supervisor",
           "WorkerLaunch", "run_supervisor", "worker_settings"]

logger = logging.getLogger("Listener.supervisor")

#: Seconds between two status reports of a worker.
STATUS_PERIOD = 0.5
#: A worker whose last report is older than this counts as unhealthy.
STATUS_STALE_AFTER = 3.0
#: First restart delay in seconds (doubled after each quick failure in a row).
RESTART_BASE = 0.5
#: Longest restart delay in seconds.
RESTART_CAP = 30.0
#: A worker that ends sooner than this after its start has failed quickly.
QUICK_EXIT_SECONDS = 10.0
#: Quick failures in a row after which the group gives up.
MAX_QUICK_FAILURES = 5
#: After the second signal, workers still running this many seconds later are killed.
KILL_AFTER_SECOND_SIGNAL = 10.0
_USAGE_ERROR = 2


@dataclasses.dataclass(frozen=True)
class WorkerLaunch:
    """What every worker needs to build its settings and processor exactly as ``mqtt-listener run`` would.

    ``overrides`` are the ``--set``/``--unset`` values; MQTT_* environment variables reach the workers by
    inheritance. It may hold a password: it travels on the worker's stdin only.
    """

    processor: str
    config_file: Optional[str] = None
    overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
    log_format: str = "text"
    log_level: str = "INFO"


def worker_settings(config: EventListenerConfig, workers: int) -> Dict[str, Any]:
    """The share group of a group of ``workers``: ``share_group``, else one named after ``client_id``.

    Raises:
        ValueError: ``client_id`` cannot name a group (it holds '/', '+' or '#') and no share_group is set.
    """
    group = config.share_group
    if group is None and workers > 1:
        problem = share_group_error(config.client_id)
        if problem:
            raise ValueError(f"client_id {config.client_id!r} cannot name the share group ({problem}); "
                             f"set share_group")
        group = config.client_id
        logger.info("share_group is not set: the %d workers share the subscription as group %r (the client_id)",
                    workers, group)
    return {"share_group": group}


class _Worker:
    """One worker slot: the current process (if any), its restarts and its last status report."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: Optional[asyncio.subprocess.Process] = None
        self.started_at = 0.0
        self.quick_failures = 0
        self.restarts = 0
        self.last_exit: Optional[int] = None
        self.status: Optional[Dict[str, Any]] = None
        self.status_at = 0.0
        #: The counters of this slot's earlier processes, as each last reported them.
        self.carried: Dict[str, Any] = {}

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def started(self, process: "asyncio.subprocess.Process") -> None:
        """A new process runs in this slot: the last counters the previous one reported are kept."""
        self.carried = self.counters()
        self.process, self.started_at, self.status = process, time.monotonic(), None

    def counters(self) -> Dict[str, Any]:
        """This slot's counters so far: the earlier processes' and the current one's last report (even a stale one)."""
        return add_counters(self.carried, (self.status or {}).get("metrics"))

    def fresh_status(self, now: float) -> Optional[Dict[str, Any]]:
        """The last report, when the process that sent it still runs and it is recent enough."""
        if not self.alive or self.status is None or now - self.status_at > STATUS_STALE_AFTER:
            return None
        return self.status


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Start ``workers`` listener processes and keep them running until a signal (see the module docstring).

    Args:
        launch: the processor and settings sources every worker uses.
        config: the validated settings (client ids, the share group and the HTTP endpoints derive from it).
        workers: how many processes (≥ 1).
        restart_base, restart_cap, quick_exit, max_quick_failures: the restart policy.
    """

    def __init__(self, launch: WorkerLaunch, config: EventListenerConfig, workers: int, *,
                 restart_base: float = RESTART_BASE, restart_cap: float = RESTART_CAP,
                 quick_exit: float = QUICK_EXIT_SECONDS, max_quick_failures: int = MAX_QUICK_FAILURES) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.launch = launch
        self.config = config
        self.group = worker_settings(config, workers)["share_group"]
        self.workers = [_Worker(index) for index in range(workers)]
        self.restart_base = restart_base
        self.restart_cap = restart_cap
        self.quick_exit = quick_exit
        self.max_quick_failures = max_quick_failures
        #: Why the group gave up (None while it has not).
        self.gave_up: Optional[str] = None
        #: The parent's exit code once the group gave up (2 when a worker exited with a usage error).
        self.gave_up_code = 1
        self.signals_received = 0
        self._stopping = asyncio.Event()
        self._kill_timer: Optional[asyncio.TimerHandle] = None

    @property
    def stopping(self) -> bool:
        """True once a signal (or a give-up) asked the group to stop."""
        return self._stopping.is_set()

    # -- running --------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Run the group until it stops; returns the exit code (0 when every worker exited 0 after a signal)."""
        loop = asyncio.get_running_loop()
        handled = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig)
                handled.append(sig)
        http: Any = None
        dashboard: Any = None
        view: Any = None
        try:
            if self.config.http_port is not None:
                from ..config.settings import http_token
                from ..ops.dashboard import Dashboard
                from ..ops.http_endpoints import start_http_endpoints
                from .group_dashboard import GroupDashboardView
                from .group_status import GroupStatus

                status = GroupStatus(self)
                view = GroupDashboardView(status, self.config, self.group)
                dashboard = Dashboard(view, token=http_token(self.config), bind_host=self.config.http_host)
                await dashboard.start()
                try:
                    http = await start_http_endpoints(status, self.config.http_host, self.config.http_port,
                                                      handler=dashboard)
                except OSError as exc:
                    print(f"mqtt-listener: cannot start: {exc}", file=sys.stderr)
                    return 1
            logger.info("Starting %d workers in share group %r", len(self.workers), self.group)
            codes = await asyncio.gather(*(self._keep_running(worker) for worker in self.workers))
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            if self._kill_timer is not None:
                self._kill_timer.cancel()
            if http is not None:
                await http.close()
            if dashboard is not None:
                await dashboard.close()
                await view.close()
        if self.gave_up is not None:
            print(f"mqtt-listener: {self.gave_up}", file=sys.stderr)
            return self.gave_up_code
        failed = [f"worker {worker.index} ({_describe_exit(code)})" for worker, code in zip(self.workers, codes)
                  if code != 0]
        if failed:
            print(f"mqtt-listener: not every worker stopped cleanly: {', '.join(failed)}", file=sys.stderr)
            return 1
        logger.info("All %d workers stopped", len(self.workers))
        return 0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Ask every worker to stop (forwarding ``sig``); nothing is restarted from now on."""
        self._stopping.set()
        for worker in self.workers:
            if worker.alive and worker.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self.signals_received += 1
        if self.signals_received == 1:
            logger.info("%s received: stopping the %d workers after their jobs in flight (send it again to stop "
                        "at once)", sig.name, len(self.workers))
        else:
            logger.warning("%s received again: stopping the workers now", sig.name)
            if self._kill_timer is None:
                self._kill_timer = asyncio.get_running_loop().call_later(KILL_AFTER_SECOND_SIGNAL, self._kill_all)
        self.stop(sig)

    def _kill_all(self) -> None:
        for worker in self.workers:
            if worker.alive and worker.process is not None:
                logger.error("Worker %d still running %g s after the second signal: killing it", worker.index,
                             KILL_AFTER_SECOND_SIGNAL)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()

    def _give_up(self, message: str, code: int = 1) -> None:
        if self.gave_up is None:
            self.gave_up, self.gave_up_code = message, code
            logger.error("%s", message)
            self.stop()

    async def _keep_running(self, worker: _Worker) -> int:
        """Start ``worker`` and restart it whenever it ends, until the group stops; returns its last exit code."""
        code = 0
        while not self.stopping:
            code = await self._run_once(worker)
            if self.stopping:
                break
            lived = time.monotonic() - worker.started_at
            worker.quick_failures = worker.quick_failures + 1 if lived < self.quick_exit else 0
            logger.warning("Worker %d (pid %s) ended unexpectedly (%s) after %.1f s", worker.index,
                           worker.process.pid if worker.process else "?", _describe_exit(code), lived)
            if code == _USAGE_ERROR:
                self._give_up(f"worker {worker.index} exited with a usage error (exit code 2); not restarting it",
                              _USAGE_ERROR)
                break
            if worker.quick_failures >= self.max_quick_failures:
                self._give_up(f"worker {worker.index} failed {worker.quick_failures} times in a row, each within "
                              f"{self.quick_exit:g} s of starting (last: {_describe_exit(code)}); giving up")
                break
            delay = backoff_delay(max(1, worker.quick_failures), self.restart_cap, base=self.restart_base)
            logger.warning("Restarting worker %d in %.1f s", worker.index, delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if not self.stopping:
                worker.restarts += 1
        return code

    async def _run_once(self, worker: _Worker) -> int:
        read_fd, write_fd = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "Listener.cli.group_worker", stdin=asyncio.subprocess.PIPE, pass_fds=(write_fd,),
                start_new_session=True)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        worker.started(process)
        logger.info("Worker %d started (pid %d, client id %s-%d)", worker.index, process.pid, self.config.client_id,
                    worker.index)
        if self.stopping:  # a signal came while it was being started: stop() did not see it yet
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        reader = asyncio.ensure_future(self._read_status(worker, read_fd))
        try:
            if process.stdin is not None:
                process.stdin.write(json.dumps(self._launch_message(worker, write_fd), default=str).encode() + b"\n")
                with contextlib.suppress(ConnectionError):
                    await process.stdin.drain()
            # stdin stays open: its end tells the worker that this supervisor is gone.
            return await process.wait()
        finally:
            if process.stdin is not None:
                process.stdin.close()
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            worker.last_exit = process.returncode

    def _launch_message(self, worker: _Worker, status_fd: int) -> Dict[str, Any]:
        overrides = dict(self.launch.overrides)
        # http_port: the parent serves the group's endpoints; a worker reports on its status pipe instead.
        overrides.update(client_id=f"{self.config.client_id}-{worker.index}", share_group=self.group, http_port=None)
        return {"processor": self.launch.processor, "config_file": self.launch.config_file, "overrides": overrides,
                "log_format": self.launch.log_format, "log_level": self.launch.log_level, "status_fd": status_fd,
                "worker_index": worker.index}

    async def _read_status(self, worker: _Worker, read_fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=4 * 1024 * 1024)
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                try:
                    status = json.loads(line)
                except ValueError:
                    continue
                if isinstance(status, dict):
                    worker.status, worker.status_at = status, time.monotonic()
        finally:
            transport.close()

    def describe(self) -> List[Dict[str, Any]]:
        """Per worker: index, pid, alive, restarts, the last fresh status report (None when none), and the
        slot's ``counters`` over all its processes (see :meth:`_Worker.counters`)."""
        now = time.monotonic()
        return [{"worker": w.index, "pid": w.process.pid if w.process is not None else None, "alive": w.alive,
                 "restarts": w.restarts, "status": w.fresh_status(now), "counters": w.counters()} for w in self.workers]


def run_supervisor(launch: WorkerLaunch, config: EventListenerConfig, workers: int) -> int:
    """Run a :class:`Supervisor` to its end (the ``--workers`` path of ``mqtt-listener run``); returns the exit code."""
    try:
        supervisor = Supervisor(launch, config, workers)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return asyncio.run(supervisor.run())
