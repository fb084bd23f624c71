"""amqtt's broker in a process of its own, for the interop tests: ``python -m tests.support.amqtt_broker PORT``.

The same broker as the ``embedded`` kind of ``Listener.testing.brokers`` (``EmbeddedBroker`` of
``Listener.mqtt.amqtt_boundary``: a plain tcp listener, anonymous clients), but a separate process, so a test can
SIGKILL it and start it again on the same port. It prints ``READY`` once listening and shuts down cleanly on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from Listener.mqtt.amqtt_boundary import EmbeddedBroker


async def serve(port: int) -> None:
    """Run the broker until SIGTERM or SIGINT."""
    broker = EmbeddedBroker("127.0.0.1", port)
    await broker.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    print("READY", flush=True)
    await stopping.wait()
    await broker.shutdown()


if __name__ == "__main__":
    # amqtt logs every connection and state change at INFO: only its warnings go to the broker's log file.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(int(sys.argv[1])))
