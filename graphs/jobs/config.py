"""Configuration of content jobs: the application's ``args.jobs`` (the ingress that takes jobs and the consumer
that makes them share it, so the queue is named once)."""

from __future__ import annotations

from pydantic import Field

from deployments.common import StrictModel
from deployments.sql import DatabaseConfig


class JobsConfig(StrictModel):
    """Where jobs are kept and queued, and how they are run."""

    store_url: str = Field(
        "sqlite:///data/content.db",
        description="SQLAlchemy URL of the jobs table (the catalog's database is a good home), or `env:NAME`.",
    )
    broker_url: str = Field(
        "redis://127.0.0.1:6390/0",
        description="The broker (Redis; `env:NAME` reads it from the replica's environment). Celery results go "
        "to the same Redis.",
    )
    queue_name: str = Field("content-jobs", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    visibility_timeout_s: int = Field(
        3600,
        ge=10,
        le=86_400,
        description="Redis re-delivers a job its consumer took but never acknowledged (the consumer died) after "
        "this: longer than the longest job, or a job still running is delivered again (harmless: the second "
        "delivery waits on the first's claim, see `lease_s`).",
    )
    restore_interval_s: int = Field(
        10, ge=1, le=3600, description="How often consumers look for jobs past their visibility timeout."
    )
    lease_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="A running job's claim lapses this long after its runner last renewed it (it renews every "
        "third of this): a delivery of a job whose runner died takes it over then; one whose runner lives waits.",
    )
    max_attempts: int = Field(3, ge=1, le=20, description="Runs of a job that fails before it is dead-lettered.")
    retry_backoff_s: float = Field(2.0, gt=0, le=600, description="Wait before the second run; doubles after.")
    event_flush_s: float = Field(
        0.2,
        gt=0,
        le=10,
        description="Events are written in batches at most this far apart (tokens never cost a write each).",
    )
    database: DatabaseConfig = Field(default_factory=DatabaseConfig, description="Each replica's connection pool.")
