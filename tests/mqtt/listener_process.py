"""A listener in its own process, for tests that kill or signal it.

Usage: python -m tests.mqtt.listener_process HOST PORT TOPIC_PREFIX [JOB_SECONDS]

Prints "READY" once connected and subscribed. Jobs sleep JOB_SECONDS (default 0) and return
{"job_id": ...}; the will message goes to TOPIC_PREFIX/status.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from typing import Any, Dict

from Listener import EventListener, EventListenerConfig


async def main(host: str, port: int, prefix: str, job_seconds: float) -> None:
    config = EventListenerConfig(
        host=host, port=port, username=None, password=None, client_id=f"proc-{uuid.uuid4().hex[:12]}",
        topic=f"{prefix}/jobs", results_topic=f"{prefix}/results", error_topic=f"{prefix}/error",
        log_topic=f"{prefix}/log", keep_alive=5, qos=1,
        will={"topic": f"{prefix}/status", "message": "listener_offline", "qos": 1, "retain": False},
    )
    listener = EventListener(config)

    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        time.sleep(job_seconds)
        return {"job_id": job_id, "slept": job_seconds}

    run = asyncio.create_task(listener.run(processor))
    await listener.wait_until_ready(10)
    print("READY", flush=True)
    await run


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 0.0))
