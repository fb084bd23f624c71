"""Manual §11.3.1, IoT Data Processing: sensor readings checked against thresholds, results per sensor type."""

import asyncio
import time
from datetime import datetime

from _cli import example_args, serve

from Listener import EventListener, EventListenerConfig, ReturnType


class IoTProcessor:
    def __init__(self):
        self.sensor_thresholds = {
            "temperature": {"min": -40, "max": 80, "critical": 75},
            "humidity": {"min": 0, "max": 100, "critical": 95},
            "pressure": {"min": 900, "max": 1100, "critical": 1050},
        }

    def process_sensor_data(self, data, job_id):
        """Process IoT sensor data."""
        sensor_id = data.get("sensor_id")
        sensor_type = data.get("sensor_type")
        value = data.get("value")
        timestamp = data.get("timestamp")
        if not all([sensor_id, sensor_type, value is not None]):
            return self.create_error("missing_fields", job_id)
        processed_data = {
            "sensor_id": sensor_id,
            "sensor_type": sensor_type,
            "value": value,
            "timestamp": timestamp,
            "processed_at": datetime.now().isoformat(),
            "job_id": job_id,
        }
        alerts = self.check_thresholds(sensor_type, value, sensor_id)
        if alerts:
            processed_data["alerts"] = alerts
            self.send_alerts(alerts, sensor_id, job_id)
        return ReturnType(data=processed_data, topic=f"processed/sensors/{sensor_type}", qos=1, retain=False,
                          message_id=int(time.time()), timestamp=datetime.now(), job_id=job_id)

    def check_thresholds(self, sensor_type, value, sensor_id):
        """Check if sensor value exceeds thresholds."""
        alerts = []
        thresholds = self.sensor_thresholds.get(sensor_type, {})
        if value < thresholds.get("min", float("-inf")):
            alerts.append({"type": "below_minimum", "threshold": thresholds["min"], "value": value})
        if value > thresholds.get("max", float("inf")):
            alerts.append({"type": "above_maximum", "threshold": thresholds["max"], "value": value})
        if value > thresholds.get("critical", float("inf")):
            alerts.append({"type": "critical", "threshold": thresholds["critical"], "value": value})
        return alerts

    def send_alerts(self, alerts, sensor_id, job_id):
        """Send alert notifications."""
        for alert in alerts:
            alert_data = {
                "alert_id": f"alert-{job_id}-{len(alerts)}",
                "sensor_id": sensor_id,
                "alert_type": alert["type"],
                "value": alert["value"],
                "threshold": alert["threshold"],
                "severity": "critical" if alert["type"] == "critical" else "warning",
                "created_at": datetime.now().isoformat(),
            }
            print(f"Alert: {alert_data}")  # would send to an alerts topic

    def create_error(self, error_type, job_id):
        """Create error response."""
        return ReturnType(
            data={"job_id": job_id, "status": "error", "error_type": error_type,
                  "error_time": datetime.now().isoformat()},
            topic="sensors/errors", qos=1, retain=True,
            message_id=int(time.time()), timestamp=datetime.now(), job_id=job_id)


async def iot_data_processor(args):
    """Process IoT sensor data from MQTT."""
    config = EventListenerConfig(
        host=args.host,
        port=args.port,
        client_id="iot-processor",
        topic="sensors/+/data",
        qos=1,
        max_jobs_in_memory=10000,
        job_cleanup_interval=3600,
    )
    processor = IoTProcessor()
    listener = EventListener(config)
    print("Starting IoT data processor...")
    await serve(listener, processor.process_sensor_data, args.count)


if __name__ == "__main__":
    asyncio.run(iot_data_processor(example_args(__doc__)))
