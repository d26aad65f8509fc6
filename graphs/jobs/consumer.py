"""The job consumer: a Ray Serve ``task_consumer`` deployment that takes job ids off the broker and makes each
content through the pipeline, writing the job's state and events to the jobs table as it goes.

Celery's handlers are synchronous and run in the worker's threads (one per ``max_ongoing_requests`` of the
deployment, so a replica runs that many jobs at once and the queue holds the rest): a run iterates the
pipeline's event stream through a ``DeploymentHandle`` from its thread, never on the replica's event loop. A
heartbeat thread renews the run's claim every third of ``lease_s`` and stops the run when the job is cancelled or
taken over. Delivery is at least once; the claim and the pipeline's idempotency key (``job:<id>``) make it one
content: a second delivery waits on a live claim, and a run after a dead one takes the key over.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.task_consumer import task_consumer, task_handler

from deployments.telemetry import telemetry
from graphs.jobs.config import JobsConfig
from graphs.jobs.queue import TASK, JobQueue, task_processor_config
from graphs.jobs.store import JobStore
from graphs.schemas import STAGES, ContentRequest, StageVariant

logger = logging.getLogger("content_studio.jobs")
STAGE_EVENTS = frozenset({"started", *STAGES})  # events that say how far a job got
QUIET_EVENTS = frozenset({"token", "audio_chunk"})  # written in batches; any other event is written at once


class _Heartbeat(threading.Thread):
    """Renews a run's claim while it runs; cancels its stream when the job is cancelled or taken over."""

    def __init__(self, store: JobStore, job_id: str, runner: str, lease_s: float, stream: Any) -> None:
        super().__init__(daemon=True, name=f"job-heartbeat-{job_id}")
        self.store, self.job_id, self.runner, self.lease_s, self.stream = store, job_id, runner, lease_s, stream
        self.stage: str | None = None
        self.stop_reason: str | None = None  # "cancelled" | "lost"
        self._done = threading.Event()

    def beat(self) -> None:
        try:
            mine, cancel = self.store.renew(self.job_id, self.runner, self.lease_s, self.stage)
        except Exception:  # the database is away for a moment: the next beat tries again
            logger.warning("renewing job %s failed", self.job_id, exc_info=True)
            return
        if not mine or cancel:
            self.stop_reason = "cancelled" if cancel else "lost"
            self.stream.cancel()  # the pipeline stops every stage in the replicas

    def run(self) -> None:
        while not self._done.wait(self.lease_s / 3):
            self.beat()

    def stop(self) -> None:
        self._done.set()


class JobRunner:
    """Runs one delivered job to its end (or to its next attempt)."""

    def __init__(self, pipeline: DeploymentHandle, store: JobStore, queue: JobQueue, config: JobsConfig) -> None:
        self.pipeline, self.store, self.queue, self.config = pipeline, store, queue, config

    def run(self, job_id: str) -> str:
        outcome = self._run(job_id)
        telemetry.count("content_studio_jobs", outcome=outcome)
        return outcome

    def _run(self, job_id: str) -> str:
        runner = f"{_replica_id()}:{uuid.uuid4().hex[:8]}"
        job = self._claim(job_id, runner)
        if job is None:
            return "skipped"
        if job["attempts"] == 1:
            telemetry.observe("content_studio_job_queue_seconds", max(0.0, time.time() - job["created_at"]))
        if job["cancel_requested"]:
            self.store.finish(job_id, runner, "cancelled", error="cancelled before it started")
            return "cancelled"
        attempt = job["attempts"]
        if attempt > 1:  # a follower starts over: what the earlier attempt streamed is superseded
            self.store.append(job_id, [("attempt", {"attempt": attempt})])
        request = ContentRequest.model_validate({**job["request"], "stream": True})
        variants = {stage: StageVariant.model_validate(v) for stage, v in job["variants"].items()}
        key, takeover = f"job:{job_id}", attempt > 1  # a later attempt takes over the key of a dead one
        stream = self.pipeline.options(stream=True).create_stream.remote(request, variants, key, takeover)
        heartbeat = _Heartbeat(self.store, job_id, runner, self.config.lease_s, stream)
        heartbeat.start()
        outcome: tuple[str, dict[str, Any]] | None = None
        batch: list[tuple[str, dict[str, Any]]] = []
        flushed = time.monotonic()
        try:
            for item in stream:
                event, data = item["event"], item["data"]
                batch.append((event, data))
                if event in STAGE_EVENTS:
                    heartbeat.stage = event
                if event in ("complete", "failed"):
                    outcome = (event, data)
                if event not in QUIET_EVENTS or time.monotonic() - flushed >= self.config.event_flush_s:
                    self.store.append(job_id, batch)
                    batch, flushed = [], time.monotonic()
        except Exception as exc:  # the stream broke (cancelled, a replica lost): decided below
            if heartbeat.stop_reason is None:
                outcome = ("failed", {"error": f"{type(exc).__name__}: {exc}"[:500]})
        finally:
            heartbeat.stop()
            self.store.append(job_id, batch)
        return self._end(job_id, runner, attempt, outcome, heartbeat.stop_reason)

    def _claim(self, job_id: str, runner: str) -> dict[str, Any] | None:
        """The job, once this runner holds it; None when there is nothing to run (finished, or gone)."""
        while True:
            claim, job = self.store.claim(job_id, runner, self.config.lease_s)
            if claim == "run":
                return job
            if claim != "busy":
                return None
            time.sleep(self.config.lease_s / 3)  # delivered again while its run lives: wait for it to end or lapse

    def _end(
        self, job_id: str, runner: str, attempt: int, outcome: tuple[str, dict[str, Any]] | None, stopped: str | None
    ) -> str:
        if stopped == "cancelled":
            self.store.finish(job_id, runner, "cancelled", error="cancelled while it ran")
            return "cancelled"
        if stopped == "lost":
            return "lost"  # another runner took the job over: it ends it
        if outcome is not None and outcome[0] == "complete":
            record = outcome[1]
            self.store.finish(job_id, runner, record["status"], content_id=record["id"])
            return record["status"]
        error = (outcome[1].get("error") if outcome else None) or "the pipeline's stream ended without a record"
        if attempt >= self.config.max_attempts:
            self.store.finish(job_id, runner, "failed", error=error)  # dead-lettered: an admin may queue it again
            return "failed"
        # Queued again after a backoff; the message goes out before the claim is let go, so a crash in between
        # leaves a delivery that waits on the lapsing claim rather than a job nobody will run.
        self.queue.enqueue(job_id, countdown_s=self.config.retry_backoff_s * 2 ** (attempt - 1))
        self.store.release(job_id, runner, error)
        return "retrying"


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_tag
    except Exception:
        return "local"


class JobConsumer:
    """The consumer deployment's class (``consumer_deployment`` wraps it in Serve's ``task_consumer``)."""

    def __init__(self, pipeline: DeploymentHandle, config: dict[str, Any]) -> None:
        self.config = JobsConfig.model_validate(config)
        self.store = JobStore(self.config.store_url, self.config.database)
        self.queue = JobQueue(self.config)
        self.runner = JobRunner(pipeline, self.store, self.queue, self.config)

    @task_handler(name=TASK)
    def make_content(self, job_id: str) -> str:
        return self.runner.run(job_id)

    async def check_health(self) -> None:
        """Serve's periodic probe: the queue's depth goes to the dashboard (the broker answering is the health)."""
        depth = await asyncio.to_thread(self.queue.depth)
        if depth is not None:
            telemetry.set("content_studio_job_queue_depth", depth, queue=self.config.queue_name)

    async def describe(self) -> dict[str, Any]:
        return {"service": "jobs", "status": "ok", "queue": self.config.queue_name}


def consumer_deployment(config: JobsConfig) -> serve.Deployment:
    """The consumer as a Serve deployment (``jobs``), its queue from ``config``."""
    consumer = task_consumer(task_processor_config=task_processor_config(config))(JobConsumer)
    return serve.deployment(name="jobs")(consumer)
