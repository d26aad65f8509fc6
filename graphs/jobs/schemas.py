"""What the job routes answer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from deployments.common import StrictModel

JobState = Literal["queued", "running", "complete", "partial", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"complete", "partial", "failed", "cancelled"})


class JobUrls(StrictModel):
    job: str
    events: str
    content: str | None = None


class JobView(StrictModel):
    """A job as ``GET /v1/jobs/{id}`` answers it."""

    id: str
    topic: str = Field(description="What the content is about (from the request).")
    state: JobState
    stage: str | None = Field(None, description="The last stage reached while running (`article`, `audio`...).")
    position: int | None = Field(None, description="Jobs queued before this one (while `queued`).")
    content_id: str | None = None
    attempts: int
    error: str | None = None
    cancel_requested: bool = False
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    urls: JobUrls


class JobAccepted(JobView):
    """The answer to ``POST /v1/jobs`` (202): the job, and where to follow it."""
