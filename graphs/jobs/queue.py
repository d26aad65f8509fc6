"""The broker under content jobs, through Ray Serve's asynchronous inference: its Celery adapter on Redis.

One ``TaskProcessorConfig`` for both ends: the ingress enqueues with it (``JobQueue``), the consumer deployment
consumes with it (``@task_consumer``). The adapter is Serve's own, with two things it leaves to us: the broker's URL
may be a secret in the replica's environment (``env:NAME``, resolved where the replica runs), and Celery's worker
takes one job at a time per thread (``worker_prefetch_multiplier=1``), so the queue's depth is the real backlog.

Why Redis (measured choices in docs/jobs.md): Serve's queue-depth autoscaling reads Redis directly (RabbitMQ
needs its management API, which this machine's RabbitMQ does not serve), the project already runs Redis for rate
limits, and its one weakness (a job taken by a consumer that died is delivered again only after the visibility
timeout) is covered by the jobs table's claims.
"""

from __future__ import annotations

import os
from typing import Any

from ray.serve.schema import CeleryAdapterConfig, TaskProcessorConfig
from ray.serve.task_processor import CeleryTaskProcessorAdapter

from graphs.jobs.config import JobsConfig

TASK = "make_content"


def broker_url(url: str) -> str:
    """``env:NAME`` -> the value of ``NAME`` in this process's environment (a secret kept out of configs)."""
    if url.startswith("env:"):
        name = url[len("env:") :]
        if name not in os.environ:
            raise ValueError(f"the broker URL is to come from ${name}, which this replica's environment lacks")
        return os.environ[name]
    return url


class JobsAdapter(CeleryTaskProcessorAdapter):
    """Serve's Celery adapter, its broker URL resolved in the replica."""

    def __init__(self, config: TaskProcessorConfig, *args: Any, **kwargs: Any) -> None:
        adapter = config.adapter_config
        url = broker_url(adapter.broker_url)
        resolved = adapter.model_copy(update={"broker_url": url, "backend_url": url})
        super().__init__(config.model_copy(update={"adapter_config": resolved}), *args, **kwargs)


def task_processor_config(config: JobsConfig) -> TaskProcessorConfig:
    return TaskProcessorConfig(
        queue_name=config.queue_name,
        adapter=JobsAdapter,
        adapter_config=CeleryAdapterConfig(
            broker_url=config.broker_url,
            backend_url=config.broker_url,
            broker_transport_options={
                "visibility_timeout": config.visibility_timeout_s,
                "unacked_restore_interval": config.restore_interval_s,
                "unacked_restore_throttle": 1,
            },
            app_custom_config={
                "worker_prefetch_multiplier": 1,
                "broker_connection_retry_on_startup": True,
                "result_expires": 86_400,
                "worker_hijack_root_logger": False,
            },
            # Retries are decided by the run: the jobs table counts attempts, a failed run puts its job back on
            # the queue with a delay, and the last failure leaves it `failed` in the table (the dead letters).
            task_custom_config={"autoretry_for": ()},
        ),
        max_retries=0,
    )


class JobQueue:
    """The producer side: puts a job's id on the broker (synchronous: call it from a worker thread)."""

    def __init__(self, config: JobsConfig) -> None:
        from ray.serve.task_consumer import instantiate_adapter_from_config

        self.config = config
        self.adapter = instantiate_adapter_from_config(task_processor_config(config))

    def enqueue(self, job_id: str, countdown_s: float = 0.0) -> None:
        self.adapter.enqueue_task_sync(TASK, args=[job_id], countdown=countdown_s or None)

    def depth(self) -> int | None:
        """Messages waiting in the queue (Redis: the length of its list); None when the broker cannot say."""
        try:
            with self.adapter._app.connection_for_read() as conn:
                return int(conn.default_channel.client.llen(self.config.queue_name))
        except Exception:
            return None
