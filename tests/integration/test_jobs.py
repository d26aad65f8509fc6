"""Content jobs on the running app: Ray Serve's task consumer on a real broker (the machine's Redis, a queue of this
session's), the jobs table in the session's database. Taken at once, followed, resumed, cancelled, and made once
even when the consumer replica making it is killed."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from tests.integration.conftest import slow_writing
from tests.integration.serve_state import replica_ids, wait_rolled_out

APP = "content-studio"
BODY = {"topic": "a harbour at dawn", "user_id": "job-user", "seed": 21}


@pytest.fixture(autouse=True)
def takes_jobs(deployed_app: dict) -> None:
    if "jobs" not in deployed_app["config"]["applications"][0].get("args", {}):
        pytest.skip("no Redis on this machine: the app takes no jobs")


def follow(client: httpx.Client, job_id: str, last: int | None = None, stop_after: int | None = None) -> list:
    """(id, event, data) of a job's events, from after ``last``; ``stop_after``: leave after that many."""
    headers = {"Last-Event-ID": str(last)} if last is not None else {}
    seen: list[tuple[int, str, dict]] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=300) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        seq, event = -1, ""
        for line in response.iter_lines():
            if line.startswith("id: "):
                seq = int(line[4:])
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                seen.append((seq, event, json.loads(line[6:])))
                if event == "job" or (stop_after is not None and len(seen) >= stop_after):
                    break
    return seen


def submit(client: httpx.Client, body: dict, key: str | None = None) -> dict:
    response = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key} if key else {})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == job["urls"]["job"] == f"/v1/jobs/{job['id']}"
    return job


def test_a_job_is_taken_at_once_followed_and_resumed_without_losing_an_event(client: httpx.Client) -> None:
    key = f"job-{uuid.uuid4().hex}"
    job = submit(client, BODY, key)
    assert job["state"] in ("queued", "running") and job["urls"]["events"].endswith("/events")
    assert submit(client, BODY, key)["id"] == job["id"]  # the same key: the same job
    first = follow(client, job["id"], stop_after=3)  # the listener's connection drops after three events
    rest = follow(client, job["id"], last=first[-1][0])  # and comes back with Last-Event-ID
    events = first + rest
    assert [seq for seq, _, _ in events] == list(range(len(events)))  # nothing lost, nothing twice
    names = [name for _, name, _ in events]
    assert names[0] == "started" and names[-2:] == ["complete", "job"]
    assert "token" in names and "audio_chunk" in names  # the streamed content's events, kept
    end = events[-1][2]
    assert end["state"] == "complete" and end["content_id"]
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["state"] == "complete" and done["urls"]["content"] == f"/v1/content/{end['content_id']}"
    assert done["attempts"] == 1 and done["finished_at"] >= done["started_at"] >= done["created_at"]
    assert client.get(done["urls"]["content"]).json()["status"] == "complete"
    assert submit(client, BODY, key)["content_id"] == end["content_id"]  # still one content for the key


def test_bad_and_unknown_jobs(client: httpx.Client) -> None:
    bad = client.post("/v1/jobs", json={"topic": " "})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "topic"
    assert client.get("/v1/jobs/j" + "0" * 32).status_code == 404
    assert client.get("/v1/jobs/not-a-job").status_code == 422
    assert client.get("/v1/jobs/j" + "0" * 32 + "/events").status_code == 404


def test_cancelling_a_job_stops_it(client: httpx.Client, deployed_app: dict, redeploy) -> None:
    # The run sees the cancel at its next heartbeat (every lease_s / 3: 2 s here); at 0.05 s a token a fast host
    # finished the whole content first (seen: "complete"), so the article is written slowly enough to outlast it.
    redeploy(slow_writing(deployed_app["config"], 0.25))
    wait_rolled_out()
    job = submit(client, {**BODY, "seed": 22})
    follow(client, job["id"], stop_after=2)  # it is being made
    cancelled = client.delete(f"/v1/jobs/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["cancel_requested"]
    deadline = time.monotonic() + 30
    while (state := client.get(f"/v1/jobs/{job['id']}").json())["state"] == "running":
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
    assert state["state"] == "cancelled" and state["content_id"] is None
    assert follow(client, job["id"])[-1][2]["state"] == "cancelled"


def test_a_job_whose_consumer_is_killed_mid_way_is_made_once_elsewhere(
    client: httpx.Client, deployed_app: dict, redeploy
) -> None:
    import ray

    redeploy(slow_writing(deployed_app["config"], 0.05))
    wait_rolled_out()
    before = client.get("/v1/content", params={"limit": 1}).json()["total"]
    job = submit(client, {**BODY, "seed": 23}, f"job-{uuid.uuid4().hex}")
    follow(client, job["id"], stop_after=2)  # a consumer is making it
    for replica in replica_ids(APP)["jobs"]:  # every consumer replica dies; Serve starts a new one
        ray.kill(ray.get_actor(f"SERVE_REPLICA::{APP}#jobs#{replica}", namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 180
    while (state := client.get(f"/v1/jobs/{job['id']}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, state
        time.sleep(1)
    assert state["state"] == "complete" and state["attempts"] >= 2, state  # the broker gave it to the new one
    assert client.get("/v1/content", params={"limit": 1}).json()["total"] == before + 1  # one content
    events = follow(client, job["id"])
    assert [name for _, name, _ in events].count("attempt") >= 1 and events[-1][2]["content_id"]
