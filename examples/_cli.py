"""What the chapter 11 examples share: --host/--port/--count arguments and a run loop that can stop after N jobs.

Each example runs as ``python examples/ch11_<name>.py [--host H] [--port P] [--count N]``; host and port
default to MQTT_HOST / MQTT_PORT, then localhost:1883. With ``--count N`` the program stops (draining as
``listener.stop()`` does) once its processor has handled N jobs, which is how the tests drive it.
"""

import argparse
import asyncio
import os
import threading


def example_args(description):
    """Parse --host, --port and --count (sys.argv)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default=os.getenv("MQTT_HOST", "localhost"),
                        help="broker host [MQTT_HOST or localhost]")
    parser.add_argument("--port", type=int, default=int(os.getenv("MQTT_PORT", "1883")),
                        help="broker port [MQTT_PORT or 1883]")
    parser.add_argument("--count", type=int, default=None, metavar="N", help="stop after N jobs (default: run until stopped)")
    return parser.parse_args()


def stop_after(listener, processor, count):
    """``processor`` (a sync one) that stops ``listener`` once it has been called ``count`` times."""
    lock = threading.Lock()
    calls = [0]

    def counted(data, job_id):
        try:
            return processor(data, job_id)
        finally:
            with lock:
                calls[0] += 1
                if calls[0] == count:
                    listener.stop()  # safe from the worker thread a sync processor runs on

    return counted


async def serve(listener, processor, count=None):
    """``await listener.run(processor)``, printing a line once subscribed, and stopping after ``count`` jobs."""
    if count:
        processor = stop_after(listener, processor, count)
    run = asyncio.create_task(listener.run(processor, handle_signals=True))
    ready = asyncio.create_task(listener.wait_until_ready())
    await asyncio.wait({run, ready}, return_when=asyncio.FIRST_COMPLETED)
    if ready.done():
        print(f"Listening on {listener.config.host}:{listener.config.port}, topic {listener.config.topic}", flush=True)
    else:
        ready.cancel()
    await run
