"""Content jobs: a content request queued on a real broker (Ray Serve's asynchronous inference, Celery on Redis)
and made by a consumer deployment, with its state and events in a table every ingress replica reads."""

from graphs.jobs.config import JobsConfig
from graphs.jobs.schemas import JobAccepted, JobState, JobView

__all__ = ["JobAccepted", "JobState", "JobView", "JobsConfig"]
