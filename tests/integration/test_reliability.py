"""Overload, dying replicas, a lost node, and access control, on the live app with real Ray."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import ray

from app.deploy import deployments_of, edge_url
from tests.integration.conftest import extra_app, wait_healthy, with_app

MODELS = ("text", "image", "voice", "recommend")


def replica_actor(app: str, deployment: str, replica_id: str | None = None):
    """The deployment's replica actor: the only one, or the one with ``replica_id`` (earlier load may have left
    the autoscaler a second replica)."""
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
    if replica_id is not None:
        names = [n for n in names if n.endswith(f"#{replica_id}")]
    assert len(names) == 1, names
    return ray.get_actor(names[0], namespace="serve")


async def _hammer(url: str, payload: dict, seconds: float, concurrency: int, timeout: float = 120) -> list:
    """Send ``payload`` from ``concurrency`` clients for ``seconds``; every request's (status, body, seconds)."""
    results: list = []
    deadline = time.monotonic() + seconds

    async def worker(session: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                response = await session.post(url, json=payload)
                results.append((response.status_code, response.json(), time.monotonic() - started))
            except httpx.HTTPError as exc:  # a hang or a dropped connection counts as lost
                results.append((None, repr(exc), time.monotonic() - started))

    async with httpx.AsyncClient(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return results


def load_while_killing(
    url: str, payload: dict, deployment: str, seconds: float, clients: int, replica_id: str | None = None
) -> list:
    """Send load for ``seconds``; a few seconds in, kill the deployment's replica (no restart by Ray)."""

    async def scenario() -> list:
        load = asyncio.create_task(_hammer(url, payload, seconds, concurrency=clients))
        await asyncio.sleep(min(3, seconds / 4))
        ray.kill(replica_actor("content-studio", deployment, replica_id), no_restart=True)
        return await load

    return asyncio.run(scenario())


def test_killing_the_text_replica_under_load_loses_no_request(client: httpx.Client, deployed_app: dict) -> None:
    before = client.get("/v1/health").json()["services"]["text"]["replica"]
    payload = {"prompt": "Once upon a time", "max_tokens": 8}

    url = f"{deployed_app['url']}/v1/completions"
    results = load_while_killing(url, payload, "text", seconds=12, clients=4, replica_id=before)
    statuses = [status for status, _, _ in results]
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    health = wait_healthy(deployed_app["url"])
    assert health["services"]["text"]["replica"] != before  # Serve replaced the killed replica


def test_killing_the_image_replica_under_pipeline_load_degrades_or_retries(
    client: httpx.Client, deployed_app: dict
) -> None:
    payload = {"topic": "harbours", "user_id": "user-4"}

    results = load_while_killing(f"{deployed_app['url']}/v1/content", payload, "image", seconds=10, clients=3)
    failed = [body for status, body, _ in results if status != 200]
    assert results and not failed, failed
    for _, record, _ in results:
        assert record["status"] in ("complete", "partial")
        assert set(record["errors"]) <= {"image"}  # only the killed service's stage may be missing
        assert record["article"]["body"]
    wait_healthy(deployed_app["url"])


def test_overload_gets_503_at_once_and_slowness_504_at_the_timeout(deployed_app: dict, redeploy) -> None:
    app = extra_app(deployed_app["config"], "tight", services=("text",))
    text = deployments_of(app)["text"]
    text.update(max_ongoing_requests=1, max_queued_requests=1, autoscaling_config=None, num_replicas=1)
    text["user_config"] = {**text["user_config"], "faults": {"delay_s": 4.0}}  # each request holds 4 s
    ingress = deployments_of(app)["ingress"]
    timeouts = {**ingress["user_config"]["timeouts_s"], "text": 1.5}
    ingress["user_config"] = {**ingress["user_config"], "timeouts_s": timeouts}
    redeploy(with_app(deployed_app, app), app="tight", healthy=("text", "ingress"))

    async def burst() -> list[tuple[httpx.Response, float]]:
        async with httpx.AsyncClient(timeout=60) as session:
            url = f"{deployed_app['url']}/tight/v1/completions"

            async def one() -> tuple[httpx.Response, float]:
                started = time.monotonic()
                response = await session.post(url, json={"prompt": "hi", "max_tokens": 2})
                return response, time.monotonic() - started

            return await asyncio.gather(*(one() for _ in range(6)))

    results = asyncio.run(burst())
    statuses = sorted(r.status_code for r, _ in results)
    assert set(statuses) == {503, 504}, statuses  # beyond capacity: 503; admitted but too slow: 504
    refused = [seconds for r, seconds in results if r.status_code == 503]
    timed_out = [seconds for r, seconds in results if r.status_code == 504]
    for response, _ in results:
        if response.status_code == 503:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"]["type"] == "service_unavailable"
        else:  # at the ingress's timeout for text, not when the model would have finished
            assert (
                response.json()["error"]["type"] == "timeout" and "within 1.5s" in response.json()["error"]["message"]
            )
    assert max(refused) < min(timed_out)  # refusals do not wait: each came back before any admitted one timed out


def test_a_lost_node_fails_fast_then_the_service_comes_back(deployed_app: dict, redeploy, tmp_path) -> None:
    """Two extra nodes offer a `spot` resource; text must run on one. Removing its node: requests fail fast or
    degrade while Serve restarts the replica on the other node, then succeed again; nothing hangs. Meanwhile
    clients that resend what was refused, after its Retry-After (the openai client's way), through the C edge:
    every one of their requests is only delayed, each refusal a JSON 503 saying when to come back (or the
    ingress's 504). The edge fronts the session application's ingress replicas and passes this second
    application's route prefix to Serve's proxy (docs/edge.md)."""
    cluster = deployed_app["cluster"]
    # Spot nodes have no CPUs for anyone else: only the text replica (0 CPUs, half a `spot`) can land there.
    spot = [cluster.add_node(num_cpus=0, resources={"spot": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    app = extra_app(deployed_app["config"], "spot", services=("text",))
    text = deployments_of(app)["text"]
    text.update(autoscaling_config=None, num_replicas=1)
    text["ray_actor_options"] = {"num_cpus": 0, "resources": {"spot": 0.5}}
    ingress = deployments_of(app)["ingress"]
    ingress["user_config"] = {
        **ingress["user_config"],
        "timeouts_s": {**ingress["user_config"]["timeouts_s"], "text": 10},
    }
    try:
        redeploy(with_app(deployed_app, app), app="spot", healthy=("text", "ingress"))
        url = f"{deployed_app['url']}/spot"
        node = httpx.get(f"{url}/v1/health", timeout=30).json()["services"]["text"]["node_id"]
        doomed = next(n for n in spot if n.node_id == node)
        edge = f"{edge_url(deployed_app['config'])}/spot"
        wait_healthy(edge)  # the edge passes the new prefix on within a round (`refresh_s`)
        resending = ResendingClients(f"{edge}/v1/completions", clients=3)
        cluster.remove_node(doomed, allow_graceful=False)

        outcomes: list[tuple[int, float]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            started = time.monotonic()
            response = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=30)
            outcomes.append((response.status_code, time.monotonic() - started))
            if response.status_code == 200 and len(outcomes) > 1:
                break
            time.sleep(1)
        assert outcomes[-1][0] == 200, outcomes  # back, on the remaining spot node
        # Each request got an answer (the client's own timeout, 30 s, would have raised): the service's, or a
        # clear 503/504 while its replica moved; nothing hung.
        assert all(status in (200, 503, 504) for status, _ in outcomes), outcomes
        served, refusals, failures = resending.stop()
        assert failures == [] and served > 0, failures  # through the edge: delayed, never failed
        for status, content_type, retry_after in refusals:  # a 504 (the ingress's timeout) is resent as any 5xx
            assert status in (503, 504) and "json" in content_type and (retry_after or status == 504), refusals
        # The replacement answers; its description may lag a moment behind (health asks each service with a
        # short timeout, and says "unavailable" meanwhile), so ask until it names its node.
        health: dict = {}
        deadline = time.monotonic() + 60
        while "node_id" not in health and time.monotonic() < deadline:
            health = httpx.get(f"{url}/v1/health", timeout=30).json()["services"]["text"]
            time.sleep(0 if "node_id" in health else 1)
        assert health.get("node_id") not in (None, node), health
    finally:
        for node in spot:
            if node in cluster.worker_nodes:
                cluster.remove_node(node)


class ResendingClients:
    """Threads sending completions to ``url`` until stopped; each request resent after a 5xx's Retry-After (at
    most 30 times), as the openai client does. ``stop`` returns completions served, every refusal (status,
    content type, Retry-After) and the requests that never got a 200."""

    def __init__(self, url: str, clients: int) -> None:
        self.url, self.done = url, threading.Event()
        self.served, self.refusals, self.failures = 0, [], []
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(clients)]
        for thread in self.threads:
            thread.start()

    def _run(self, n: int) -> None:
        with httpx.Client(timeout=60) as http:
            while not self.done.is_set():
                for _ in range(30):
                    try:
                        response = http.post(self.url, json={"prompt": f"Spot {n}", "max_tokens": 2})
                    except httpx.TransportError as exc:  # the edge holds the connection: never expected
                        self.failures.append(repr(exc))
                        break
                    if response.status_code == 200:
                        self.served += 1
                        break
                    headers = response.headers
                    self.refusals.append(
                        (response.status_code, headers.get("content-type", ""), headers.get("retry-after"))
                    )
                    time.sleep(float(headers.get("retry-after") or 1))
                else:
                    self.failures.append(f"no 200 after 30 sends: {response.status_code} {response.text[:200]}")

    def stop(self) -> tuple[int, list, list]:
        self.done.set()
        for thread in self.threads:
            thread.join(300)
        return self.served, self.refusals, self.failures


def test_a_replica_failing_its_health_checks_is_replaced(deployed_app: dict, redeploy) -> None:
    """Health checks run real inference; when they fail (here: injected through config), Serve replaces the
    replica."""
    app = extra_app(deployed_app["config"], "sick", services=("voice",))
    voice = deployments_of(app)["voice"]
    voice.update(health_check_period_s=1, health_check_timeout_s=5, autoscaling_config=None, num_replicas=1)
    redeploy(with_app(deployed_app, app), app="sick", healthy=("voice", "ingress"))
    url = f"{deployed_app['url']}/sick/v1/health"
    first = httpx.get(url, timeout=30).json()["services"]["voice"]["replica"]

    voice["user_config"] = {**voice["user_config"], "faults": {"fail_health_checks": True}}
    redeploy(with_app(deployed_app, app))
    prefix = "SERVE_REPLICA::sick#voice#"
    replicas: set[str] = set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
        replicas |= {name.removeprefix(prefix) for name in names if name.startswith(prefix)}
        if replicas - {first}:
            break
        time.sleep(1)
    assert replicas - {first}, "Serve never replaced the unhealthy replica"
