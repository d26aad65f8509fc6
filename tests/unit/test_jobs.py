"""Content jobs without Ray: the jobs table on both SQL dialects (claims, events, cancel, dead letters), and a
run of a job over a stand-in pipeline stream (complete, retried, dead-lettered, delivered twice, cancelled)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from deployments.errors import InvalidRequest
from graphs.jobs import JobsConfig
from graphs.jobs.consumer import JobRunner
from graphs.jobs.store import JobStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        return JobStore(f"sqlite:///{tmp_path}/jobs.db")
    postgres = request.getfixturevalue("postgres")
    return JobStore(postgres.create(f"jobs_{request.node.name[-30:].lower().replace('[', '_').replace(']', '')}"))


def jid(n: int) -> str:
    return "j" + f"{n:032x}"


REQUEST = {"topic": "tides", "user_id": "u1", "seed": 3}


def test_a_key_stands_for_one_job_and_its_place_in_the_queue(store: JobStore) -> None:
    _, created = store.submit(jid(1), REQUEST, {}, "f1", "k1")
    again, created_again = store.submit(jid(2), REQUEST, {}, "f1", "k1")
    assert created and not created_again and again["id"] == jid(1)
    with pytest.raises(InvalidRequest) as err:
        store.submit(jid(3), {"topic": "other"}, {}, "f2", "k1")
    assert err.value.param == "Idempotency-Key"
    store.submit(jid(4), REQUEST, {}, "f1", None)
    assert store.get(jid(1))["position"] == 0 and store.get(jid(4))["position"] == 1
    assert store.get(jid(9)) is None


def test_a_claim_is_one_runners_until_it_lapses(store: JobStore) -> None:
    store.submit(jid(1), REQUEST, {}, "f", None)
    claim, job = store.claim(jid(1), "a", lease_s=0.5)
    assert claim == "run" and job["attempts"] == 1
    assert store.claim(jid(1), "b", lease_s=0.5)[0] == "busy"  # delivered again while "a" runs
    assert store.renew(jid(1), "a", 0.5, stage="article") == (True, False)
    assert store.get(jid(1))["stage"] == "article"
    time.sleep(0.6)  # "a" died: its claim lapses
    claim, job = store.claim(jid(1), "b", lease_s=5)
    assert claim == "run" and job["attempts"] == 2
    assert store.renew(jid(1), "a", 5) == (False, False)  # "a" learns it lost the job
    assert not store.finish(jid(1), "a", "complete")  # and cannot end it
    assert store.finish(jid(1), "b", "complete", content_id="c1")
    assert store.claim(jid(1), "c", lease_s=5)[0] == "finished"
    assert store.claim(jid(9), "c", lease_s=5)[0] == "missing"


def test_events_are_numbered_in_order_and_end_with_the_job(store: JobStore) -> None:
    store.submit(jid(1), REQUEST, {}, "f", None)
    store.claim(jid(1), "a", lease_s=5)
    store.append(jid(1), [("started", {"id": "c1"}), ("token", {"text": "a"})])
    store.append(jid(1), [("token", {"text": "b"})])
    store.finish(jid(1), "a", "partial", content_id="c1")
    events = store.events(jid(1), -1)
    assert [(s, e) for s, e, _ in events] == [(0, "started"), (1, "token"), (2, "token"), (3, "job")]
    assert events[-1][2] == {"id": jid(1), "state": "partial", "content_id": "c1", "error": None}
    assert [s for s, _, _ in store.events(jid(1), 1)] == [2, 3]  # resumed after event 1


def test_cancel_ends_a_queued_job_and_asks_a_running_one(store: JobStore) -> None:
    store.submit(jid(1), REQUEST, {}, "f", None)
    assert store.cancel(jid(1))["state"] == "cancelled"
    assert store.claim(jid(1), "a", 5)[0] == "finished"  # its delivery finds nothing to do
    store.submit(jid(2), REQUEST, {}, "f", None)
    store.claim(jid(2), "a", 5)
    assert store.cancel(jid(2))["state"] == "running"
    assert store.renew(jid(2), "a", 5) == (True, True)  # the runner stops at its next beat


def test_dead_letters_can_be_queued_again_or_dropped(store: JobStore) -> None:
    for n in (1, 2):
        store.submit(jid(n), REQUEST, {}, "f", None)
        store.claim(jid(n), "a", 5)
        store.finish(jid(n), "a", "failed", error="text service failed")
    dead = store.listing("failed")
    assert [j["id"] for j in dead] == [jid(2), jid(1)] and dead[0]["error"]
    again = store.requeue(jid(1))
    assert again["state"] == "queued" and again["attempts"] == 0
    assert store.drop(jid(2)) and store.get(jid(2)) is None and store.events(jid(2), -1) == []
    assert not store.drop(jid(1))  # only a failed job
    assert store.counts() == {"queued": 1}


# --- a run over a stand-in pipeline -----------------------------------------------------------------------
class Stream:
    """What the pipeline's ``create_stream`` handle call returns: an iterator of events, ``cancel`` stops it."""

    def __init__(self, events: list[tuple[str, dict]], pause_s: float = 0.0) -> None:
        self.events, self.pause_s, self.cancelled = events, pause_s, threading.Event()

    def __iter__(self):
        for event, data in self.events:
            if self.cancelled.wait(self.pause_s):
                raise RuntimeError("RequestCancelledError: the stream was cancelled")
            yield {"event": event, "data": data}

    def cancel(self) -> None:
        self.cancelled.set()


class Pipeline:
    """A stand-in for the pipeline's handle: hands out the scripted streams and records the calls."""

    def __init__(self, *streams: Stream) -> None:
        self.streams, self.calls = list(streams), []

    def options(self, stream: bool = False) -> Pipeline:
        return self

    @property
    def create_stream(self) -> Pipeline:
        return self

    def remote(self, request, variants, key, takeover) -> Stream:
        self.calls.append((request.topic, key, takeover))
        return self.streams.pop(0)


class Queue:
    def __init__(self) -> None:
        self.sent: list[tuple[str, float]] = []

    def enqueue(self, job_id: str, countdown_s: float = 0.0) -> None:
        self.sent.append((job_id, countdown_s))


def made(content_id: str = "c1", status: str = "complete") -> list[tuple[str, dict]]:
    return [("started", {"id": content_id}), ("token", {"text": "Hi"}), ("article", {"title": "T", "body": "B"}),
            ("complete", {"id": content_id, "status": status})]  # fmt: skip


FAILED = [("started", {"id": "c1"}), ("failed", {"error": "the text service is unavailable"})]


def runner(store: JobStore, pipeline: Pipeline, queue: Queue | None = None, **config: Any) -> JobRunner:
    return JobRunner(pipeline, store, queue or Queue(), JobsConfig(lease_s=1.0, max_attempts=2, **config))


def test_a_run_keeps_every_event_and_ends_the_job(store: JobStore) -> None:
    store.submit(jid(1), REQUEST, {}, "f", None)
    pipeline = Pipeline(Stream(made(status="partial")))
    assert runner(store, pipeline).run(jid(1)) == "partial"
    job = store.get(jid(1))
    assert (job["state"], job["content_id"], job["attempts"]) == ("partial", "c1", 1)
    assert [e for _, e, _ in store.events(jid(1), -1)] == ["started", "token", "article", "complete", "job"]
    assert pipeline.calls == [("tides", f"job:{jid(1)}", False)]  # the job id is the content's idempotency key


def test_a_failed_run_is_tried_again_then_dead_lettered(store: JobStore) -> None:
    store.submit(jid(1), REQUEST, {}, "f", None)
    queue, pipeline = Queue(), Pipeline(Stream(FAILED), Stream(FAILED))
    assert runner(store, pipeline, queue, retry_backoff_s=2.0).run(jid(1)) == "retrying"
    assert store.get(jid(1))["state"] == "queued" and queue.sent == [(jid(1), 2.0)]  # back on the broker, later
    assert runner(store, pipeline, queue).run(jid(1)) == "failed"  # its second and last attempt
    job = store.get(jid(1))
    assert job["state"] == "failed" and "unavailable" in job["error"] and job["attempts"] == 2
    assert [j["id"] for j in store.listing("failed")] == [jid(1)]
    assert pipeline.calls[1][2] is True  # the second attempt takes the content's key over
    assert "attempt" in [e for _, e, _ in store.events(jid(1), -1)]


def test_a_job_delivered_twice_makes_one_content(store: JobStore) -> None:
    """The broker gives the job to a second consumer while the first still runs it (a short visibility timeout):
    the second waits on the first's claim, then finds the job finished."""
    store.submit(jid(1), REQUEST, {}, "f", None)
    pipeline = Pipeline(Stream(made(), pause_s=0.3))
    results: dict[str, str] = {}
    first = threading.Thread(target=lambda: results.update(first=runner(store, pipeline).run(jid(1))))
    first.start()
    time.sleep(0.2)
    results["second"] = runner(store, pipeline).run(jid(1))
    first.join()
    assert results == {"first": "complete", "second": "skipped"}
    assert len(pipeline.calls) == 1 and store.get(jid(1))["attempts"] == 1


def test_a_running_job_is_cancelled_at_its_next_beat(store: JobStore) -> None:
    store.submit(jid(1), REQUEST, {}, "f", None)
    stream = Stream([("started", {"id": "c1"}), *[("token", {"text": "x"})] * 50, *made()[2:]], pause_s=0.1)
    result: dict[str, str] = {}
    thread = threading.Thread(target=lambda: result.update(r=runner(store, Pipeline(stream)).run(jid(1))))
    thread.start()
    time.sleep(0.3)
    store.cancel(jid(1))
    thread.join(timeout=10)
    assert result == {"r": "cancelled"} and stream.cancelled.is_set()
    assert store.get(jid(1))["state"] == "cancelled"
    assert store.events(jid(1), -1)[-1][2]["state"] == "cancelled"


def test_a_job_as_the_api_answers_it(store: JobStore) -> None:
    from graphs.jobs.board import JobBoard

    store.submit(jid(1), REQUEST, {}, "f", None)
    view = JobBoard.view(store.get(jid(1)))
    assert (view.topic, view.state, view.position, view.attempts) == ("tides", "queued", 0, 0)
    assert view.urls.events == f"/v1/jobs/{jid(1)}/events" and view.urls.content is None
    store.claim(jid(1), "a", 5)
    store.finish(jid(1), "a", "complete", content_id="c1")
    assert JobBoard.view(store.get(jid(1))).urls.content == "/v1/content/c1"
