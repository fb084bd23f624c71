"""Manual §11.2.1, Multi-Topic Processing: events/# with custom topics, routed by topic or message type."""

import asyncio
import time
from datetime import datetime

from _cli import example_args, serve

from Listener import EventListener, EventListenerConfig, ReturnType


async def multi_topic_example(args):
    """Process messages from multiple topics with different handling."""
    config = EventListenerConfig(
        host=args.host,
        port=args.port,
        client_id="multi-topic-processor",
        topic="events/#",  # Subscribe to all events
        custom_topics={
            "events/alerts": {"qos": 2, "retain": True},
            "events/metrics": {"qos": 0, "retain": False},
            "events/commands": {"qos": 1, "retain": False},
        },
    )
    listener = EventListener(config)

    def multi_topic_processor(data, job_id):
        """Route processing based on topic or message type."""
        topic = data.get("_topic", "")  # the topic the message arrived on
        message_type = data.get("type", "unknown")
        if "alerts" in topic or message_type == "alert":
            return process_alert(data, job_id)
        elif "metrics" in topic or message_type == "metric":
            return process_metric(data, job_id)
        elif "commands" in topic or message_type == "command":
            return process_command(data, job_id)
        else:
            return process_default(data, job_id)

    def process_alert(data, job_id):
        """Process alert messages with high priority."""
        severity = data.get("severity", "info")
        message = data.get("message", "No message")
        print(f"ALERT [{severity.upper()}]: {message}")
        result = {
            "type": "alert_processed",
            "job_id": job_id,
            "severity": severity,
            "processed_at": datetime.now().isoformat(),
            "alert_id": data.get("alert_id"),
        }
        return ReturnType(data=result, topic="monitoring/alerts", qos=2,  # High reliability for alerts
                          retain=True, message_id=int(time.time()), timestamp=datetime.now(), job_id=job_id)

    def process_metric(data, job_id):
        """Process metric data for analytics."""
        metric_name = data.get("metric_name")
        value = data.get("value")
        print(f"METRIC: {metric_name} = {value} at {data.get('timestamp')}")
        result = {
            "type": "metric_processed",
            "job_id": job_id,
            "metric": metric_name,
            "value": value,
            "processed_at": datetime.now().isoformat(),
        }
        return ReturnType(data=result, topic="analytics/metrics", qos=0,  # Lower reliability for metrics
                          retain=False, message_id=int(time.time()), timestamp=datetime.now(), job_id=job_id)

    def process_command(data, job_id):
        """Process command messages."""
        command = data.get("command")
        params = data.get("parameters", {})
        print(f"COMMAND: {command} with params {params}")
        success = execute_command(command, params)
        result = {
            "type": "command_executed",
            "job_id": job_id,
            "command": command,
            "success": success,
            "executed_at": datetime.now().isoformat(),
        }
        return ReturnType(data=result, topic="commands/results", qos=1, retain=False,
                          message_id=int(time.time()), timestamp=datetime.now(), job_id=job_id)

    def process_default(data, job_id):
        """Default processing for unknown message types."""
        print(f"DEFAULT: Processing job {job_id}")
        result = {
            "type": "default_processed",
            "job_id": job_id,
            "original_data": data,
            "processed_at": datetime.now().isoformat(),
        }
        # Not under events/: the listener subscribes to events/# and would receive its own result.
        return ReturnType(data=result, topic="processed/events", qos=0, retain=False,
                          message_id=int(time.time()), timestamp=datetime.now(), job_id=job_id)

    def execute_command(command, params):
        """Simulate command execution."""
        commands = {
            "restart": lambda: True,
            "status": lambda: True,
            "backup": lambda: params.get("target") is not None,
        }
        handler = commands.get(command)
        return handler() if handler else False

    await serve(listener, multi_topic_processor, args.count)


if __name__ == "__main__":
    asyncio.run(multi_topic_example(example_args(__doc__)))
