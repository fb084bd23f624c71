"""Manual §11.3.2, Distributed Task Processing: a QoS 2 worker with per-task-type results and statistics."""

import asyncio
import time
import uuid
from datetime import datetime, timedelta

from _cli import example_args, serve

from Listener import EventListener, EventListenerConfig, ReturnType


class TaskWorker:
    def __init__(self, worker_id):
        self.worker_id = worker_id
        self.processed_count = 0
        self.start_time = datetime.now()

    def process_task(self, data, job_id):
        """Process distributed task."""
        task_type = data.get("task_type")
        created_at = data.get("created_at")
        if created_at:
            task_age = datetime.now() - datetime.fromisoformat(str(created_at))
            if task_age > timedelta(hours=1):
                return self.create_expired_response(job_id, task_age)
        if task_type == "image_processing":
            return self.process_image_task(data, job_id)
        elif task_type == "data_analysis":
            return self.process_analysis_task(data, job_id)
        elif task_type == "report_generation":
            return self.process_report_task(data, job_id)
        else:
            return self.create_unknown_task_response(job_id, task_type)

    def completed(self, job_id, result, topic):
        self.processed_count += 1
        return ReturnType(data=result, topic=topic, qos=2, retain=False,
                          message_id=int(time.time()), timestamp=datetime.now(), job_id=job_id)

    def process_image_task(self, data, job_id):
        """Process image processing task (simulated)."""
        result = {"job_id": job_id, "task_type": "image_processing", "worker_id": self.worker_id,
                  "image_url": data.get("image_url"), "operations_performed": data.get("operations", []),
                  "output_url": f"processed/{job_id}.jpg", "processing_time": "2.3s", "status": "completed"}
        return self.completed(job_id, result, "tasks/completed/image")

    def process_analysis_task(self, data, job_id):
        """Process data analysis task (simulated)."""
        result = {"job_id": job_id, "task_type": "data_analysis", "worker_id": self.worker_id,
                  "dataset_id": data.get("dataset_id"), "analysis_type": data.get("analysis_type"),
                  "results": {"total_records": 10000, "anomalies_detected": 23, "confidence_score": 0.94},
                  "status": "completed"}
        return self.completed(job_id, result, "tasks/completed/analysis")

    def process_report_task(self, data, job_id):
        """Process report generation task (simulated)."""
        result = {"job_id": job_id, "task_type": "report_generation", "worker_id": self.worker_id,
                  "report_type": data.get("report_type"), "report_url": f"reports/{job_id}.pdf",
                  "parameters": data.get("parameters", {}), "page_count": 15, "status": "completed"}
        return self.completed(job_id, result, "tasks/completed/reports")

    def create_expired_response(self, job_id, task_age):
        """Handle expired tasks."""
        return ReturnType(
            data={"job_id": job_id, "status": "expired", "worker_id": self.worker_id,
                  "task_age_seconds": task_age.total_seconds(), "expired_at": datetime.now().isoformat()},
            topic="tasks/expired", qos=1, retain=False,
            message_id=int(time.time()), timestamp=datetime.now(), job_id=job_id)

    def create_unknown_task_response(self, job_id, task_type):
        """Handle unknown task types."""
        return ReturnType(
            data={"job_id": job_id, "status": "error", "error_type": "unknown_task_type", "task_type": task_type,
                  "worker_id": self.worker_id, "error_time": datetime.now().isoformat()},
            topic="tasks/errors", qos=1, retain=True,
            message_id=int(time.time()), timestamp=datetime.now(), job_id=job_id)

    def get_worker_stats(self):
        """Get worker statistics."""
        uptime = max((datetime.now() - self.start_time).total_seconds(), 1e-9)
        return {"worker_id": self.worker_id, "processed_count": self.processed_count,
                "uptime_seconds": uptime, "rate_per_hour": self.processed_count / (uptime / 3600)}


async def distributed_task_processor(args):
    """Distributed task processing system."""
    worker_id = f"worker-{uuid.uuid4().hex[:8]}"
    config = EventListenerConfig(
        host=args.host,
        port=args.port,
        topic="tasks/queue",
        client_id=worker_id,
        qos=2,  # Exactly once delivery
        max_jobs_in_memory=500,
        job_cleanup_interval=1800,
    )
    worker = TaskWorker(worker_id)
    listener = EventListener(config)
    print(f"Starting distributed task worker: {worker_id}")

    async def log_stats():
        while True:
            await asyncio.sleep(300)  # Every 5 minutes
            print(f"Worker stats: {worker.get_worker_stats()}")

    stats_task = asyncio.create_task(log_stats())
    try:
        await serve(listener, worker.process_task, args.count)
    finally:
        stats_task.cancel()
    print(f"Worker stats: {worker.get_worker_stats()}")


if __name__ == "__main__":
    asyncio.run(distributed_task_processor(example_args(__doc__)))
