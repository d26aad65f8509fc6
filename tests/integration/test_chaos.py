"""Chaos: under mixed load, one replica of every deployment in turn is killed (two ingress replicas). Clients
behave as the openai client does (they resend on 409, 429, 5xx and dropped connections, honouring Retry-After,
and keep a content request's Idempotency-Key across resends). Nothing is lost and nothing is made twice."""

from __future__ import annotations

import asyncio
import copy
import random
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
import ray

from app.deploy import app_of, deployments_of
from tests.integration.conftest import wait_deployments_healthy, wait_healthy

APP = "content-studio"
DEPLOYMENTS = ("ingress", "pipeline", "text", "image", "voice", "recommend")
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
        self.resends = 0

    async def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        for attempt in range(6):
            try:
                response = await self.http.request(method, path, **kwargs)
                if response.status_code not in RETRY:
                    return response
                wait = min(float(response.headers.get("Retry-After", 1)), 5.0)
            except httpx.TransportError as exc:  # the connection dropped with the ingress replica
                response, wait = None, 0.5 * 2**attempt
                last: Any = repr(exc)
            else:
                last = (response.status_code, response.text[:300])
            self.resends += 1
            await asyncio.sleep(wait)
        self.failures.append((path, last))
        return None


async def mixed_load(url: str, seconds: float, made: list[tuple[str, dict]], counts: Counter) -> list[Client]:
    deadline = time.monotonic() + seconds

    async def completions(client: Client) -> None:
        while time.monotonic() < deadline:
            body = {"prompt": f"Tide {random.random():.4f}", "max_tokens": 8}
            response = await client.send("POST", "/v1/completions", json=body)
            counts["completions"] += response is not None and response.status_code == 200

    async def contents(client: Client, n: int) -> None:
        while time.monotonic() < deadline:
            key = uuid.uuid4().hex
            body = {"topic": f"harbour {n}", "user_id": f"chaos-{n}", "image": {"steps": 2}}
            response = await client.send("POST", "/v1/content", json=body, headers={"Idempotency-Key": key})
            if response is not None:
                assert response.status_code == 200, response.text[:300]
                made.append((key, response.json()))

    async def reads(client: Client, n: int) -> None:
        while time.monotonic() < deadline:
            response = await client.send("GET", "/v1/recommendations", params={"user_id": f"chaos-{n}", "k": 3})
            counts["recommendations"] += response is not None and response.status_code == 200
            await asyncio.sleep(0.2)

    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        clients = [Client(http) for _ in range(6)]
        await asyncio.gather(
            completions(clients[0]),
            completions(clients[1]),
            contents(clients[2], 0),
            contents(clients[3], 1),
            reads(clients[4], 0),
            reads(clients[5], 1),
        )
    return clients


@pytest.mark.late
def test_killing_any_replica_under_mixed_load_loses_and_doubles_nothing(
    client: httpx.Client, deployed_app: dict, redeploy
) -> None:
    config = copy.deepcopy(deployed_app["config"])
    ingress = deployments_of(app_of(config))["ingress"]
    ingress.pop("autoscaling_config", None)
    ingress["num_replicas"] = 2
    redeploy(config, app=APP, healthy=DEPLOYMENTS)
    total_before = client.get("/v1/content", params={"limit": 1}).json()["total"]
    made: list[tuple[str, dict]] = []
    counts: Counter = Counter()
    report: dict[str, dict[str, Any]] = {}
    for deployment in DEPLOYMENTS:

        async def scenario(name: str = deployment) -> list[Client]:
            load = asyncio.create_task(mixed_load(deployed_app["url"], 10, made, counts))
            await asyncio.sleep(3)
            await asyncio.to_thread(kill_one_replica, name)
            return await load

        started = len(made)
        clients = asyncio.run(scenario())
        failures = [f for c in clients for f in c.failures]
        assert failures == [], (deployment, failures)
        statuses = Counter(record["status"] for _, record in made[started:])
        missing = Counter(stage for _, record in made[started:] for stage in record["errors"])
        report[deployment] = {
            "contents": dict(statuses),
            "missing": dict(missing),
            "resends": sum(c.resends for c in clients),
        }
        # A partial content names what is missing, and only the stage of the service that was killed may miss.
        stage = {"image": "image", "voice": "audio", "recommend": "recommendations"}.get(deployment)
        assert set(missing) <= ({stage} if stage else set()), (deployment, missing)
        wait_deployments_healthy(APP, DEPLOYMENTS)
        wait_healthy(deployed_app["url"])
    print("chaos:", report, dict(counts))
    assert counts["completions"] > 0 and counts["recommendations"] > 0
    # Every content request made exactly one content: one id per key, and the catalog grew by as many.
    ids = [record["id"] for _, record in made]
    assert len(set(ids)) == len(made) == len({key for key, _ in made})
    assert client.get("/v1/content", params={"limit": 1}).json()["total"] == total_before + len(made)
    for content_id in random.sample(ids, min(5, len(ids))):
        assert client.get(f"/v1/content/{content_id}").status_code == 200
