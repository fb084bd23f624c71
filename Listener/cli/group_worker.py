"""One worker of ``mqtt-listener run --workers N``, started by :mod:`Listener.cli.supervisor` (not for direct use).

``python -m Listener.cli.group_worker`` reads its launch message, one JSON line, from stdin: the processor,
the settings sources and overrides (client id, share group), the log format and level, and the number of
the pipe it reports its status on. Then it runs exactly as ``mqtt-listener run`` does, with two additions:
a status report (JSON line) every :data:`~Listener.cli.supervisor.STATUS_PERIOD` seconds, and a drain when its
stdin ends (the supervisor is gone). Exit codes are those of ``mqtt-listener run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from typing import Any, Dict, List

__all__ = ["StatusPipe", "main"]

logger = logging.getLogger("Listener.group_worker")

_LAUNCH_LIMIT = 1024 * 1024
# Signals that arrive before the listener's own handlers are installed: honoured as soon as it runs.
_early_signals: List[int] = []


def _remember_signal(signum: int, frame: Any) -> None:
    _early_signals.append(signum)


class _WorkerTag(logging.Filter):
    """Starts every log message with ``worker <i>:``, so that the group's interleaved lines can be told apart."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.prefix = f"worker {index}: "

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.prefix):
            record.msg, record.args = self.prefix + message, ()
        return True


class StatusPipe:
    """Status reports written to a non-blocking pipe; a report that does not fit waits, newer ones are skipped."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = False
        self._pending = b""
        os.set_blocking(fd, False)

    def send(self, report: Dict[str, Any]) -> None:
        """Write ``report`` as one JSON line (or finish the previous one, if it is still partly unwritten)."""
        if self.closed:
            return
        if not self._pending:
            self._pending = json.dumps(report, separators=(",", ":"), default=str).encode("utf-8") + b"\n"
        try:
            written = os.write(self.fd, self._pending)
        except BlockingIOError:
            return
        except OSError:  # the supervisor is gone
            self.closed = True
            return
        self._pending = self._pending[written:]


def _report(listener: Any) -> Dict[str, Any]:
    return {"pid": os.getpid(), "ready": bool(listener.is_ready), "draining": bool(listener.is_draining),
            "running": bool(listener.is_running), "metrics": listener.metrics()}


def _watch_stdin(loop: asyncio.AbstractEventLoop, listener: Any) -> None:
    """Block until stdin ends (the supervisor closed it or died), then ask the listener to drain."""
    with contextlib.suppress(OSError):
        while os.read(0, 65536):
            pass

    def stop() -> None:
        logger.warning("The supervisor is gone: stopping after the jobs in flight")
        listener.stop()

    with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is ending anyway
        loop.call_soon_threadsafe(stop)


def _companion(status: StatusPipe, period: float) -> Any:
    async def beside(listener: Any) -> None:
        if _early_signals:
            listener.stop()
        threading.Thread(target=_watch_stdin, args=(asyncio.get_running_loop(), listener), daemon=True,
                         name="mqtt-listener-supervisor-watch").start()
        while True:
            status.send(_report(listener))
            await asyncio.sleep(period)

    return beside


def main() -> int:
    """Read the launch message, run the listener; returns the exit code of ``mqtt-listener run``."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _remember_signal)
    from ..ops.json_logging import configure_logging
    from .command import CliError, _fail, _run_service, _secrets, load_config, load_processor
    from .supervisor import STATUS_PERIOD

    try:
        launch = json.loads(sys.stdin.buffer.readline(_LAUNCH_LIMIT))
        status = StatusPipe(int(launch["status_fd"]))
    except (ValueError, KeyError, TypeError, OSError) as exc:
        _fail(f"worker: no valid launch message on stdin ({type(exc).__name__}); start it with --workers")
        return 2
    try:
        config = load_config(launch["config_file"], launch["overrides"])
        handler = configure_logging(launch["log_format"], launch["log_level"], _secrets(config))
        handler.addFilter(_WorkerTag(int(launch.get("worker_index", 0))))
        processor = load_processor(launch["processor"])
    except CliError as exc:
        _fail(str(exc))
        return exc.code
    try:
        return asyncio.run(_run_service(config, processor, False, companion=_companion(status, STATUS_PERIOD)))
    except SystemExit as exc:
        _fail(f"the listener stopped on SystemExit({exc.code!r})", _secrets(config))
        return 1


if __name__ == "__main__":  # pragma: no cover - the supervisor's child process
    sys.exit(main())
