"""Chaos: under mixed load, one replica of every deployment in turn is killed, a few seconds apart, while the
replicas killed before are still being replaced (one of the local profile's two ingress replicas too). Clients
behave as the openai client does (they resend on 409, 429, 5xx and dropped connections, honouring Retry-After,
and keep a content request's Idempotency-Key across resends), through the C edge; content jobs are submitted
alongside and their consumer is killed too. Nothing is lost, nothing is made twice (jobs included), a content
misses only the stage of a service killed while it was being made, and every failed answer is JSON (a 503 with
Retry-After). The long run (``slow``: several rounds) is for game days, not `make test`."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
import ray

from app.deploy import app_of, deployments_of, edge_url
from tests.integration.conftest import wait_healthy
from tests.integration.serve_state import wait_deployments_healthy

APP = "content-studio"
DEPLOYMENTS = ("ingress", "pipeline", "text", "image", "voice", "recommend", "embed")
STAGE_OF = {"image": "image", "voice": "audio", "recommend": "recommendations"}  # the optional stages
KILL_EVERY_S = 4.0
RECOVERY_S = 15.0  # a replacement replica starts within this on the test machine, under the load
RETRY = {409, 429, 500, 502, 503, 504}


def kill_one_replica(deployment: str) -> str:
    """Kill one replica actor of ``deployment`` (Ray does not restart it; Serve replaces it)."""
    prefix = f"SERVE_REPLICA::{APP}#{deployment}#"
    names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))
    assert names, f"no replica of {deployment}"
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    return names[0]


class Client:
    """One well-behaved client: resends what failed for want of a replica, with the same idempotency key."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.failures: list[tuple[str, Any]] = []
        self.errors: list[tuple[int, str, str | None]] = []  # every 5xx answer: status, content type, Retry-After
        self.resends = 0

    async def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        for attempt in range(10):
            try:
                response = await self.http.request(method, path, **kwargs)
                if response.status_code >= 500:
                    headers = response.headers
                    self.errors.append(
                        (response.status_code, headers.get("content-type", ""), headers.get("retry-after"))
                    )
                if response.status_code not in RETRY:
                    return response
                wait = min(float(response.headers.get("Retry-After", 1)), 5.0)
            except httpx.TransportError as exc:  # the connection dropped with the ingress replica
                response, wait = None, min(0.5 * 2**attempt, 5.0)
                last: Any = repr(exc)
            else:
                last = (response.status_code, response.text[:300])
            self.resends += 1
            await asyncio.sleep(wait)
        self.failures.append((path, last))
        return None


Made = list[tuple[str, dict, float, float]]  # idempotency key, record, sent at, answered at (monotonic)


async def mixed_load(url: str, seconds: float, made: Made, counts: Counter, jobs: dict | None) -> list[Client]:
    deadline = time.monotonic() + seconds

    async def completions(client: Client) -> None:
        while time.monotonic() < deadline:
            body = {"prompt": f"Tide {random.random():.4f}", "max_tokens": 8}
            response = await client.send("POST", "/v1/completions", json=body)
            counts["completions"] += response is not None and response.status_code == 200

    async def contents(client: Client, n: int) -> None:
        while time.monotonic() < deadline:
            key, sent = uuid.uuid4().hex, time.monotonic()
            body = {"topic": f"harbour {n}", "user_id": f"chaos-{n}", "image": {"steps": 2}}
            response = await client.send("POST", "/v1/content", json=body, headers={"Idempotency-Key": key})
            if response is not None:
                assert response.status_code == 200, response.text[:300]
                made.append((key, response.json(), sent, time.monotonic()))

    async def submissions(client: Client) -> None:
        """Content jobs, one every two seconds, each under its own key (resent as the others are)."""
        while jobs is not None and time.monotonic() < deadline:
            key = uuid.uuid4().hex
            body = {"topic": f"harbour job {len(jobs)}", "user_id": "chaos-jobs", "image": {"steps": 2}}
            response = await client.send("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
            if response is not None:
                assert response.status_code == 202, response.text[:300]
                jobs.setdefault(key, set()).add(response.json()["id"])
            await asyncio.sleep(2)

    async def reads(client: Client, n: int) -> None:
        while time.monotonic() < deadline:
            response = await client.send("GET", "/v1/recommendations", params={"user_id": f"chaos-{n}", "k": 3})
            counts["recommendations"] += response is not None and response.status_code == 200
            body = {"input": [f"harbour {n}", "tides"], "encoding_format": "float"}
            response = await client.send("POST", "/v1/embeddings", json=body)
            counts["embeddings"] += response is not None and response.status_code == 200
            await asyncio.sleep(0.2)

    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        clients = [Client(http) for _ in range(7)]
        await asyncio.gather(
            completions(clients[0]),
            completions(clients[1]),
            contents(clients[2], 0),
            contents(clients[3], 1),
            reads(clients[4], 0),
            reads(clients[5], 1),
            submissions(clients[6]),
        )
    return clients


def chaos(client: httpx.Client, deployed_app: dict, rounds: int) -> None:
    config = deployed_app["config"]
    assert deployments_of(app_of(config))["ingress"]["num_replicas"] == 2  # as the local profile runs it
    # Where the app takes content jobs, they are submitted too, and their consumer is killed as well.
    jobs: dict[str, set[str]] | None = {} if "jobs" in app_of(config).get("args", {}) else None
    targets = (*DEPLOYMENTS, "jobs") if jobs is not None else DEPLOYMENTS
    wait_deployments_healthy(APP, targets)
    edge = edge_url(config)  # the load goes through the C edge, as clients of the local profile do
    assert edge is not None
    wait_healthy(edge)
    total_before = client.get("/v1/content", params={"limit": 1}).json()["total"]
    made: Made = []
    counts: Counter = Counter()
    killed: list[tuple[str, float]] = []
    resends = 0
    for _ in range(rounds):

        async def scenario() -> list[Client]:
            seconds = 2 + KILL_EVERY_S * len(targets) + 6  # the last kill, then time to recover under load
            load = asyncio.create_task(mixed_load(edge, seconds, made, counts, jobs))
            for n, deployment in enumerate(targets):
                await asyncio.sleep(2 if n == 0 else KILL_EVERY_S)
                await asyncio.to_thread(kill_one_replica, deployment)
                killed.append((deployment, time.monotonic()))
            return await load

        clients = asyncio.run(scenario())
        failures = [f for c in clients for f in c.failures]
        assert failures == [], failures
        # The edge answers every failure in JSON (never the proxy's plain-text 500 of a lost ingress replica),
        # and every 503 says when to come back.
        errors = [e for c in clients for e in c.errors]
        assert [e for e in errors if "json" not in e[1]] == [], errors
        assert [e for e in errors if e[0] == 503 and not e[2]] == [], errors
        resends += sum(c.resends for c in clients)
        wait_deployments_healthy(APP, targets)
        wait_healthy(deployed_app["url"])
    missing = Counter(stage for _, record, _, _ in made for stage in record["errors"])
    print("chaos:", dict(counts), {"contents": len(made), "missing": dict(missing), "resends": resends})
    assert counts["completions"] > 0 and counts["recommendations"] > 0 and counts["embeddings"] > 0
    # A partial content names what it misses: only the stage of a service killed while it was being made (or
    # just before: its replacement may still have been starting).
    for _, record, sent, answered in made:
        during = {STAGE_OF.get(d) for d, at in killed if sent - RECOVERY_S <= at <= answered}
        assert set(record["errors"]) <= during - {None}, (record["errors"], during)
    # Every content request made exactly one content: one id per key, and the catalog grew by as many.
    ids = [record["id"] for _, record, _, _ in made]
    assert len(set(ids)) == len(made) == len({key for key, *_ in made})
    job_contents = finished_jobs(client, jobs or {})  # every job accepted once, made once
    assert len(set(job_contents)) == len(job_contents) and set(ids).isdisjoint(job_contents)
    total = client.get("/v1/content", params={"limit": 1}).json()["total"]
    assert total == total_before + len(made) + len(job_contents)
    for content_id in random.sample(ids, min(5, len(ids))):
        assert client.get(f"/v1/content/{content_id}").status_code == 200


def finished_jobs(client: httpx.Client, jobs: dict[str, set[str]], timeout: float = 240) -> list[str]:
    """The content of every job, once all have ended: one job per key, each complete (or partial, missing a
    stage of a killed service), none lost; a job whose consumer was killed is delivered again and made once."""
    assert all(len(ids) == 1 for ids in jobs.values()), jobs  # a resent submission is the same job
    contents, deadline = [], time.monotonic() + timeout
    for (job_id,) in jobs.values():
        while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(1)
        assert job["state"] in ("complete", "partial"), job
        contents.append(job["content_id"])
    return contents


@pytest.mark.late
def test_killing_any_replica_under_mixed_load_loses_and_doubles_nothing(
    client: httpx.Client, deployed_app: dict
) -> None:
    chaos(client, deployed_app, rounds=1)


@pytest.mark.late
@pytest.mark.slow
def test_a_long_chaos_run_loses_and_doubles_nothing(client: httpx.Client, deployed_app: dict) -> None:
    chaos(client, deployed_app, rounds=4)
