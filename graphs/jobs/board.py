"""The taking side of content jobs, for the ingress: a job is written to the table, then its id to the broker.

Synchronous (a database write and a broker publish): the ingress calls it from a worker thread, so its event loop
never waits on either. Sent again under the same ``Idempotency-Key``, a request answers the same job; a job still
queued is published again (a replica that died between the write and the publish leaves a job nobody would run;
a second message is harmless: its delivery finds the job claimed or finished).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from deployments.errors import NotFound, Unavailable
from graphs.jobs.config import JobsConfig
from graphs.jobs.queue import JobQueue
from graphs.jobs.schemas import JobUrls, JobView
from graphs.jobs.store import JobStore
from graphs.schemas import ContentRequest, StageVariant, fingerprint


class JobBoard:
    """The jobs table and the queue's producer, opened on first use."""

    def __init__(self, config: JobsConfig, retry_after_s: int = 5) -> None:
        self.config, self.retry_after_s = config, retry_after_s
        self._lock = threading.Lock()
        self._store: JobStore | None = None
        self._queue: JobQueue | None = None

    @property
    def store(self) -> JobStore:
        with self._lock:
            if self._store is None:
                self._store = JobStore(self.config.store_url, self.config.database)
            return self._store

    @property
    def queue(self) -> JobQueue:
        with self._lock:
            if self._queue is None:
                self._queue = JobQueue(self.config)
            return self._queue

    def submit(self, request: ContentRequest, variants: dict[str, StageVariant], key: str | None) -> JobView:
        body = request.model_dump(mode="json", exclude={"stream"})
        job_id = "j" + uuid.uuid4().hex
        stages = {stage: v.model_dump(mode="json") for stage, v in variants.items()}
        job, created = self.store.submit(job_id, body, stages, fingerprint(request), key)
        if job["state"] == "queued":
            try:
                self.queue.enqueue(job["id"])
            except Exception as exc:
                if created:  # never published: gone, so that the client's resend makes it
                    self.store.forget(job["id"])
                raise Unavailable(
                    f"the job queue is unavailable: {type(exc).__name__}", retry_after_s=self.retry_after_s
                ) from None
        return self.view(self.store.get(job["id"]) or job)

    def get(self, job_id: str) -> JobView:
        job = self.store.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return self.view(job)

    def cancel(self, job_id: str) -> JobView:
        job = self.store.cancel(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return self.view(job)

    def requeue(self, job_id: str) -> JobView:
        job = self.store.requeue(job_id)
        if job is None:
            raise NotFound(f"no failed job {job_id}")
        self.queue.enqueue(job_id)
        return self.view(job)

    def depth(self) -> int | None:
        return self.queue.depth()

    @staticmethod
    def view(job: dict[str, Any]) -> JobView:
        content = f"/v1/content/{job['content_id']}" if job.get("content_id") else None
        urls = JobUrls(job=f"/v1/jobs/{job['id']}", events=f"/v1/jobs/{job['id']}/events", content=content)
        fields = {name: job.get(name) for name in JobView.model_fields if name not in ("urls", "topic")}
        return JobView.model_validate(
            {
                **fields,
                "topic": job["request"]["topic"],
                "cancel_requested": bool(job.get("cancel_requested")),
                "urls": urls,
            }
        )
