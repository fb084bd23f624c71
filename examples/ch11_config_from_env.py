"""Manual §11.1.2, Configuration from Environment: every setting from MQTT_* and friends."""

import asyncio
import os
from datetime import datetime

from _cli import example_args, serve

from Listener import EventListener, EventListenerConfig, ReturnType


def create_config_from_env(host, port):
    """Create configuration from environment variables (--host/--port default to MQTT_HOST/MQTT_PORT)."""
    return EventListenerConfig(
        host=host,
        port=port,
        username=os.getenv("MQTT_USERNAME"),
        password=os.getenv("MQTT_PASSWORD"),
        topic=os.getenv("MQTT_TOPIC", "events"),
        client_id=os.getenv("MQTT_CLIENT_ID", "env-listener"),
        # SSL settings
        cafile=os.getenv("MQTT_CA_FILE"),
        # Job settings
        max_jobs_in_memory=int(os.getenv("MAX_JOBS", 5000)),
        job_cleanup_interval=int(os.getenv("CLEANUP_INTERVAL", 3600)),
    )


async def main(args):
    config = create_config_from_env(args.host, args.port)
    listener = EventListener(config)

    def env_processor(data, job_id):
        return ReturnType(
            data={"processed": True, "job_id": job_id},
            topic=os.getenv("RESULTS_TOPIC", "results"),
            qos=1,
            retain=False,
            message_id=1,
            timestamp=datetime.now(),
            job_id=job_id,
        )

    await serve(listener, env_processor, args.count)


if __name__ == "__main__":
    asyncio.run(main(example_args(__doc__)))
