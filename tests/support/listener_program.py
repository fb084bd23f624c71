"""A listener in a process of its own, for tests that kill or signal it (driven by
``tests.support.listener_processes.ListenerProcess``).

Usage: python -m tests.support.listener_program HOST PORT TOPIC_PREFIX [JOB_SECONDS] [options]

Prints "READY" once connected and subscribed. Jobs sleep JOB_SECONDS (default 0) and return
{"job_id": ...}; the will message goes to TOPIC_PREFIX/status.

Options (all optional; without them the process behaves as it always did):
  --client-id ID        fixed MQTT client id (default: a random one)
  --persistent          cleansession=False (the broker keeps the session while the process is gone)
  --signals             call listener.install_signal_handlers() (SIGTERM/SIGINT stop the listener gracefully)
  --grace SECONDS       shutdown_grace_period
  --max-concurrent N    max_concurrent_jobs
  --ack-policy POLICY   ack_policy (after_processing, after_recording or on_receipt)
  --job-store URL       job_store ("memory", "sqlite:////abs/path.db" or "redis://host:port/db")
  --duplicate-action A  duplicate_action (skip, error or reprocess)
  --runs-file PATH      the processor appends "<job_id> <pid>" to PATH (O_APPEND) for every run
  --sleep-from-payload  a job's own "sleep" key (seconds) overrides JOB_SECONDS
  --quiet               print no STARTED/DONE lines (bursts of thousands of jobs)
  --qos N               QoS of the job subscription (default 1)
  --result-qos N        results are published at QoS N (default: the config's default_qos, 0)
The processor prints "STARTED <job_id>" when a job starts and "DONE <job_id>" when it ends, and the
process prints "EXITED" when run() has returned.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
import uuid
from typing import Any, Dict, List, Optional

from Listener import EventListener, EventListenerConfig, create_return_type


_OUTPUT_LOCK = threading.Lock()


def say(line: str) -> None:
    """Print one whole line at once (the processor's thread and the event loop both print)."""
    with _OUTPUT_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def parse_arguments(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line described in the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("prefix")
    parser.add_argument("job_seconds", type=float, nargs="?", default=0.0)
    parser.add_argument("--client-id", default=None)
    parser.add_argument("--persistent", action="store_true")
    parser.add_argument("--signals", action="store_true")
    parser.add_argument("--grace", type=float, default=None)
    parser.add_argument("--max-concurrent", type=int, default=None)
    parser.add_argument("--ack-policy", default=None)
    parser.add_argument("--job-store", default=None)
    parser.add_argument("--duplicate-action", default=None)
    parser.add_argument("--runs-file", default=None)
    parser.add_argument("--share-group", default=None)
    parser.add_argument("--sleep-from-payload", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--qos", type=int, default=1)
    parser.add_argument("--result-qos", type=int, default=None)
    return parser.parse_args(argv)


def record_run(path: str, job_id: str) -> None:
    """Append one line per run; O_APPEND keeps lines whole across processes and a SIGKILL."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{job_id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


async def main(args: argparse.Namespace) -> None:
    """Run a listener until it is stopped (by a signal, with ``--signals``) or killed."""
    options = {"grace": "shutdown_grace_period", "max_concurrent": "max_concurrent_jobs", "ack_policy": "ack_policy",
               "job_store": "job_store", "duplicate_action": "duplicate_action", "share_group": "share_group"}
    extra: Dict[str, Any] = {field: getattr(args, option) for option, field in options.items()
                             if getattr(args, option) is not None}
    prefix = args.prefix
    config = EventListenerConfig(
        host=args.host, port=args.port, username=None, password=None,
        client_id=args.client_id or f"proc-{uuid.uuid4().hex[:12]}", cleansession=not args.persistent,
        topic=f"{prefix}/jobs", results_topic=f"{prefix}/results", error_topic=f"{prefix}/error",
        log_topic=f"{prefix}/log", keep_alive=5, qos=args.qos,
        will={"topic": f"{prefix}/status", "message": "listener_offline", "qos": 1, "retain": False},
        **extra,
    )
    listener = EventListener(config)
    job_seconds = args.job_seconds

    runs_file = args.runs_file
    loud = not args.quiet

    def processor(data: Dict[str, Any], job_id: str) -> Any:
        if runs_file is not None:
            record_run(runs_file, job_id)
        if loud:
            say(f"STARTED {job_id}")
        seconds = float(data.get("sleep", job_seconds)) if args.sleep_from_payload else job_seconds
        if seconds:
            time.sleep(seconds)
        if loud:
            say(f"DONE {job_id}")
        result = {"job_id": job_id, "slept": seconds}
        if args.result_qos is not None:
            return create_return_type(result, "", qos=args.result_qos)
        return result

    if args.signals:
        listener.install_signal_handlers()
    run = asyncio.create_task(listener.run(processor))
    await listener.wait_until_ready(10)
    say("READY")
    await run
    say("EXITED")


if __name__ == "__main__":
    asyncio.run(main(parse_arguments()))
