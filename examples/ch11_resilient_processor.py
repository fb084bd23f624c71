"""Manual §11.2.2, Error Handling and Resilience: a circuit breaker, validation, per-task-type handling."""

import asyncio
import logging
import time
from datetime import datetime, timedelta

from _cli import example_args, serve

from Listener import EventListener, EventListenerConfig, ReturnType

logging.basicConfig(level=logging.INFO)
logger = logging.getLogger(__name__)


class ResilientProcessor:
    def __init__(self):
        self.error_count = 0
        self.last_error_time = None
        self.circuit_breaker_open = False
        self.max_errors = 5
        self.circuit_reset_time = timedelta(minutes=5)

    def check_circuit_breaker(self):
        """True while the circuit breaker is open (it closes again after circuit_reset_time)."""
        if self.circuit_breaker_open:
            if (datetime.now() - self.last_error_time) > self.circuit_reset_time:
                self.circuit_breaker_open = False
                self.error_count = 0
                logger.info("Circuit breaker reset")
                return False
            return True
        return False

    def record_error(self):
        """Record error for circuit breaker."""
        self.error_count += 1
        self.last_error_time = datetime.now()
        if self.error_count >= self.max_errors:
            self.circuit_breaker_open = True
            logger.warning("Circuit breaker opened due to errors")

    def record_success(self):
        """Record successful processing."""
        if self.error_count > 0:
            self.error_count = max(0, self.error_count - 1)

    def process_message(self, data, job_id):
        """Process message with error handling."""
        try:
            if self.check_circuit_breaker():
                return self.create_error_response(job_id, "circuit_breaker", "Circuit breaker is open")
            if not self.validate_input(data):
                return self.create_error_response(job_id, "validation_error", "Invalid input data")
            task_type = data.get("task_type", "unknown")
            if task_type == "data_processing":
                result = self.process_data_task(data, job_id)
            elif task_type == "file_operation":
                result = self.process_file_task(data, job_id)
            elif task_type == "api_call":
                result = self.process_api_task(data, job_id)
            else:
                result = self.process_unknown_task(data, job_id)
            self.record_success()
            return result
        except ValueError as e:
            logger.error(f"Validation error for job {job_id}: {e}")
            return self.create_error_response(job_id, "validation_error", str(e))
        except ConnectionError as e:
            logger.error(f"Connection error for job {job_id}: {e}")
            self.record_error()
            return self.create_error_response(job_id, "connection_error", str(e))
        except TimeoutError as e:
            logger.error(f"Timeout for job {job_id}: {e}")
            return self.create_error_response(job_id, "timeout_error", str(e))
        except Exception as e:
            logger.exception(f"Unexpected error for job {job_id}")
            self.record_error()
            return self.create_error_response(job_id, "processing_error", str(e))

    def validate_input(self, data):
        """Validate input data."""
        required_fields = ["task_type", "job_id"]
        return all(field in data for field in required_fields)

    def process_data_task(self, data, job_id):
        """Process data processing task."""
        input_data = data.get("input_data", {})
        operation = data.get("operation", "transform")
        if operation == "transform":
            result_data = {key: str(value).upper() for key, value in input_data.items()}
        elif operation == "aggregate":
            result_data = {"count": len(input_data), "keys": list(input_data.keys())}
        else:
            raise ValueError(f"Unknown operation: {operation}")
        return self.create_success_response(job_id, result_data, "data/results")

    def process_file_task(self, data, job_id):
        """Process file operation task (simulated: the path is only echoed, never opened)."""
        file_path = data.get("file_path")
        operation = data.get("operation", "read")
        if not file_path:
            raise ValueError("file_path is required for file operations")
        if operation == "read":
            result = {"operation": "read", "file": file_path, "size": 1024}
        elif operation == "write":
            result = {"operation": "write", "file": file_path, "success": True}
        else:
            raise ValueError(f"Unknown file operation: {operation}")
        return self.create_success_response(job_id, result, "files/results")

    def process_api_task(self, data, job_id):
        """Process API call task."""
        endpoint = data.get("endpoint")
        method = data.get("method", "GET")
        if not endpoint:
            raise ValueError("endpoint is required for API calls")
        result = {"endpoint": endpoint, "method": method, "status_code": 200, "response": {"success": True}}
        return self.create_success_response(job_id, result, "api/results")

    def process_unknown_task(self, data, job_id):
        """Process unknown task type."""
        logger.warning(f"Unknown task type for job {job_id}: {data.get('task_type')}")
        result = {"job_id": job_id, "status": "skipped", "reason": "unknown_task_type", "original_data": data}
        return ReturnType(data=result, topic="skipped/tasks", qos=0, retain=False,
                          message_id=int(time.time()), timestamp=datetime.now(), job_id=job_id)

    def create_success_response(self, job_id, result_data, topic):
        """Create success response."""
        result = {"job_id": job_id, "status": "completed", "result": result_data,
                  "processed_at": datetime.now().isoformat()}
        return ReturnType(data=result, topic=topic, qos=1, retain=False,
                          message_id=int(time.time()), timestamp=datetime.now(), job_id=job_id)

    def create_error_response(self, job_id, error_type, error_message):
        """Create error response (retained: the last error stays visible to new subscribers)."""
        result = {"job_id": job_id, "status": "error", "error_type": error_type, "error_message": error_message,
                  "failed_at": datetime.now().isoformat()}
        # Not under tasks/: the listener subscribes to tasks/+ and would receive its own responses.
        return ReturnType(data=result, topic="errors/tasks", qos=1, retain=True,
                          message_id=int(time.time()), timestamp=datetime.now(), job_id=job_id)


async def resilient_processor_example(args):
    """Example with comprehensive error handling and resilience."""
    config = EventListenerConfig(
        host=args.host,
        port=args.port,
        client_id="resilient-processor",
        topic="tasks/+",
        auto_reconnect=True,
        reconnect_retries=10,
        reconnect_max_interval=60,
        max_jobs_in_memory=1000,
        job_cleanup_interval=1800,  # 30 minutes
    )
    processor = ResilientProcessor()
    listener = EventListener(config)
    logger.info("Starting resilient processor...")
    await serve(listener, processor.process_message, args.count)


if __name__ == "__main__":
    asyncio.run(resilient_processor_example(example_args(__doc__)))
