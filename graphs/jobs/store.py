"""The jobs table and its events, in any SQLAlchemy database: what a job is, how far it got, and everything it
said, where every ingress replica can read it.

The broker carries only job ids; the job itself lives here. A run *claims* its job (``claim``) for ``lease_s``
and renews the claim while it runs: a second delivery of the same job (a short visibility timeout, a consumer that
looked dead) waits while the claim is alive and takes the job over only once it lapsed, so a job makes one content
however often it is delivered. Events are appended in batches with consecutive sequence numbers (the SSE ids a
client resumes from).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import sqlalchemy as sa

from deployments.errors import InvalidRequest
from deployments.sql import MigratedStore
from graphs.jobs.schemas import FINISHED

Claim = Literal["run", "busy", "finished", "missing"]
METADATA = sa.MetaData()
JOBS = sa.Table(
    "content_jobs",
    METADATA,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("idempotency_key", sa.String(300), nullable=True, unique=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("variants", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("stage", sa.String(32), nullable=True),
    sa.Column("content_id", sa.String(40), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("runner", sa.String(200), nullable=True),
    sa.Column("lease_until", sa.Float, nullable=False),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("next_seq", sa.Integer, nullable=False),
)
EVENTS = sa.Table(
    "content_job_events",
    METADATA,
    sa.Column("job_id", sa.String(40), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
)


class JobStore(MigratedStore):
    """Jobs and their events (schema: migrations/jobs/)."""

    environment = "jobs"

    # --- taking jobs ----------------------------------------------------------------------------------------
    def submit(
        self, job_id: str, request: dict[str, Any], variants: dict[str, Any], fingerprint: str, key: str | None
    ) -> tuple[dict[str, Any], bool]:
        """A new queued job, or the job an idempotency key already stands for (``created`` False); a key used
        with another request is a 400."""
        with self.writing() as conn:
            if key is not None:
                found = conn.execute(sa.select(JOBS).where(JOBS.c.idempotency_key == key)).mappings().first()
                if found is not None:
                    if found["fingerprint"] != fingerprint:
                        raise InvalidRequest(
                            "this Idempotency-Key was used with a different request: use a new key for a new job",
                            "Idempotency-Key",
                        )
                    return dict(found), False
            row = {
                "id": job_id,
                "idempotency_key": key,
                "fingerprint": fingerprint,
                "request": request,
                "variants": variants,
                "state": "queued",
                "attempts": 0,
                "lease_until": 0.0,
                "cancel_requested": False,
                "created_at": time.time(),
                "next_seq": 0,
            }
            conn.execute(sa.insert(JOBS), row)
            return {**row, "stage": None, "content_id": None, "error": None, "started_at": None}, True

    def forget(self, job_id: str) -> None:
        """A job that never reached the broker: gone, so that a resend of its request makes it anew."""
        with self.writing() as conn:
            conn.execute(sa.delete(JOBS).where(JOBS.c.id == job_id, JOBS.c.state == "queued"))

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job, with its place in the queue while it waits."""
        with self.reading() as conn:
            row = conn.execute(sa.select(JOBS).where(JOBS.c.id == job_id)).mappings().first()
            if row is None:
                return None
            job = dict(row)
            job["position"] = (
                conn.scalar(
                    sa.select(sa.func.count())
                    .select_from(JOBS)
                    .where(JOBS.c.state == "queued", JOBS.c.created_at < job["created_at"])
                )
                if job["state"] == "queued"
                else None
            )
            return job

    def listing(self, state: str, limit: int = 100) -> list[dict[str, Any]]:
        """Jobs in one state, newest first (``failed``: the dead letters)."""
        with self.reading() as conn:
            rows = conn.execute(
                sa.select(JOBS).where(JOBS.c.state == state).order_by(JOBS.c.created_at.desc()).limit(limit)
            )
            return [dict(r) for r in rows.mappings()]

    def counts(self) -> dict[str, int]:
        """Jobs by state."""
        with self.reading() as conn:
            rows = conn.execute(sa.select(JOBS.c.state, sa.func.count()).group_by(JOBS.c.state))
            return {state: n for state, n in rows}

    # --- running jobs ---------------------------------------------------------------------------------------
    def claim(self, job_id: str, runner: str, lease_s: float) -> tuple[Claim, dict[str, Any] | None]:
        """Take the job to run it: ``run`` (it is this runner's, one attempt more), ``busy`` (another runner's
        claim is alive), ``finished`` (nothing left to do), ``missing``."""
        now = time.time()
        with self.writing() as conn:
            row = conn.execute(sa.select(JOBS).where(JOBS.c.id == job_id).with_for_update()).mappings().first()
            if row is None:
                return "missing", None
            if row["state"] in FINISHED:
                return "finished", dict(row)
            if row["state"] == "running" and row["lease_until"] > now and row["runner"] != runner:
                return "busy", dict(row)
            taken = conn.execute(
                sa.update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.attempts == row["attempts"], JOBS.c.state == row["state"])
                .values(
                    state="running",
                    runner=runner,
                    lease_until=now + lease_s,
                    attempts=row["attempts"] + 1,
                    started_at=row["started_at"] or now,
                )
            )
            if taken.rowcount != 1:  # another runner took it between our read and our write
                return "busy", dict(row)
            return "run", {**dict(row), "state": "running", "attempts": row["attempts"] + 1, "runner": runner}

    def renew(self, job_id: str, runner: str, lease_s: float, stage: str | None = None) -> tuple[bool, bool]:
        """Keep this runner's claim alive (and note the stage reached): (still ours, cancel requested)."""
        values: dict[str, Any] = {"lease_until": time.time() + lease_s}
        if stage is not None:
            values["stage"] = stage
        with self.writing() as conn:
            mine = conn.execute(
                sa.update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.runner == runner, JOBS.c.state == "running")
                .values(**values)
            )
            cancel = conn.scalar(sa.select(JOBS.c.cancel_requested).where(JOBS.c.id == job_id))
            return mine.rowcount == 1, bool(cancel)

    def append(self, job_id: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Events of a job, in order, in one transaction (with the next sequence numbers)."""
        if not events:
            return
        with self.writing() as conn:
            first = conn.scalar(sa.select(JOBS.c.next_seq).where(JOBS.c.id == job_id).with_for_update())
            if first is None:
                return
            conn.execute(
                sa.insert(EVENTS),
                [{"job_id": job_id, "seq": first + i, "event": e, "data": d} for i, (e, d) in enumerate(events)],
            )
            conn.execute(sa.update(JOBS).where(JOBS.c.id == job_id).values(next_seq=first + len(events)))

    def events(self, job_id: str, after: int, limit: int = 500) -> list[tuple[int, str, dict[str, Any]]]:
        """Events with sequence numbers above ``after`` (-1: from the first), in order."""
        with self.reading() as conn:
            rows = conn.execute(
                sa.select(EVENTS.c.seq, EVENTS.c.event, EVENTS.c.data)
                .where(EVENTS.c.job_id == job_id, EVENTS.c.seq > after)
                .order_by(EVENTS.c.seq)
                .limit(limit)
            )
            return [(seq, event, data) for seq, event, data in rows]

    def finish(
        self,
        job_id: str,
        runner: str | None,
        state: str,
        content_id: str | None = None,
        error: str | None = None,
    ) -> bool:
        """End a job (``runner``: only while it is that runner's; None: a job nobody runs), with its last event
        (``job``: the state, the content, the error), so a follower knows it can stop."""
        now = time.time()
        with self.writing() as conn:
            mine = JOBS.c.runner == runner if runner is not None else JOBS.c.state == "queued"
            ended = conn.execute(
                sa.update(JOBS)
                .where(JOBS.c.id == job_id, mine, JOBS.c.state.not_in(FINISHED))
                .values(state=state, content_id=content_id, error=error, finished_at=now, lease_until=0.0)
            )
            if ended.rowcount != 1:
                return False
        self.append(job_id, [("job", {"id": job_id, "state": state, "content_id": content_id, "error": error})])
        return True

    def release(self, job_id: str, runner: str, error: str) -> None:
        """A run that failed and will be tried again: queued, with its error, its attempts counted."""
        with self.writing() as conn:
            conn.execute(
                sa.update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.runner == runner, JOBS.c.state == "running")
                .values(state="queued", error=error, lease_until=0.0, runner=None)
            )

    # --- people ---------------------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a job: a queued one at once (its delivery will find it finished), a running one cooperatively
        (its runner stops at its next batch of events)."""
        with self.writing() as conn:
            conn.execute(
                sa.update(JOBS).where(JOBS.c.id == job_id, JOBS.c.state.not_in(FINISHED)).values(cancel_requested=True)
            )
        self.finish(job_id, None, "cancelled", error="cancelled before it started")
        return self.get(job_id)

    def requeue(self, job_id: str) -> dict[str, Any] | None:
        """A dead-lettered (failed) job queued again with fresh attempts (its events go on after the old ones)."""
        with self.writing() as conn:
            again = conn.execute(
                sa.update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.state == "failed")
                .values(state="queued", attempts=0, error=None, finished_at=None, runner=None, cancel_requested=False)
            )
            if again.rowcount != 1:
                return None
        return self.get(job_id)

    def drop(self, job_id: str) -> bool:
        """Delete a dead-lettered job and its events."""
        with self.writing() as conn:
            gone = conn.execute(sa.delete(JOBS).where(JOBS.c.id == job_id, JOBS.c.state == "failed"))
            if gone.rowcount == 1:
                conn.execute(sa.delete(EVENTS).where(EVENTS.c.job_id == job_id))
            return gone.rowcount == 1
