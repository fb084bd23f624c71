"""Manual §11.1.1, Simple Message Processing: one topic, a ReturnType result on events/results."""

import asyncio
import time
from datetime import datetime

from _cli import example_args, serve

from Listener import EventListener, EventListenerConfig, ReturnType


async def main(args):
    """Basic message processing example."""
    config = EventListenerConfig(
        host=args.host,
        port=args.port,
        topic="events/tasks",
        client_id="simple-processor",
    )
    listener = EventListener(config)

    def simple_processor(data, job_id):
        """Process incoming messages."""
        print(f"Processing job {job_id}")
        print(f"Task: {data.get('task_type', 'unknown')}")
        result = {
            "job_id": job_id,
            "status": "completed",
            "processed_at": datetime.now().isoformat(),
            "data": data,
        }
        return ReturnType(
            data=result,
            topic="events/results",
            qos=1,
            retain=False,
            message_id=int(time.time()),
            timestamp=datetime.now(),
            job_id=job_id,
        )

    print("Starting MQTT Event Listener...")
    await serve(listener, simple_processor, args.count)


if __name__ == "__main__":
    asyncio.run(main(example_args(__doc__)))
