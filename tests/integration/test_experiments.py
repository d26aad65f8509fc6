"""A/B experiments in the running app: the local profile's 90/10 text experiment over HTTP. Request counts are
each ingress replica's own (the local profile runs two): the tests read every running replica's report."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections import Counter

import httpx
import openai
import pytest

from tests.integration.serve_state import replica_reports

USERS = 1000


def complete_as(base_url: str, users: list[str], concurrency: int = 16) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:

            async def one(user: str) -> httpx.Response:
                async with gate:
                    body = {"prompt": "Hello", "max_tokens": 1, "user": user}
                    return await client.post("/v1/completions", json=body)

            return list(await asyncio.gather(*(one(u) for u in users)))

    return asyncio.run(run())


def experiment_report(client: httpx.Client) -> dict:
    """One ingress replica's report: its own request counts, and the content and interactions (the pipeline's,
    the same from every replica)."""
    body = client.get("/v1/experiments").json()
    return next(e for e in body["experiments"] if e["name"] == "text-v2")


def every_replicas_report() -> dict[str, dict]:
    """Every running ingress replica's own report (``experiments_here``: its counts), by replica id, through a
    handle: over HTTP the proxy prefers the ingress replica on its own node, so one replica may answer every
    ``GET /v1/experiments``."""
    return replica_reports("content-studio", "ingress", method="experiments_here")


def fleet_counts() -> dict[str, dict[str, int]]:
    """Requests and errors per variant, added up over every ingress replica."""
    counts: dict[str, dict[str, int]] = {}
    for body in every_replicas_report().values():
        experiment = next(e for e in body["experiments"] if e["name"] == "text-v2")
        for name, variant in experiment["variants"].items():
            total = counts.setdefault(name, {"requests": 0, "errors": 0})
            total["requests"] += variant["requests"]
            total["errors"] += variant["errors"]
    return counts


@pytest.fixture(scope="module")
def split(base_url: str, client: httpx.Client) -> dict:
    before = fleet_counts()
    responses = complete_as(base_url, [f"ab-user-{n}" for n in range(USERS)])
    return {
        "before": before,
        "responses": responses,
        "after": fleet_counts(),
        "report": experiment_report(client),
    }


def test_a_thousand_users_split_90_10_and_every_answer_names_its_variant(split: dict) -> None:
    responses = split["responses"]
    assert [r.status_code for r in responses] == [200] * USERS
    variants = Counter(r.headers["x-model-variant"] for r in responses)
    assert set(variants) == {"control", "candidate"}
    assert abs(variants["candidate"] / USERS - 0.10) <= 0.02, variants
    for response in responses:
        body = response.json()
        assert body["variant"] == response.headers["x-model-variant"]
        assert body["model"] == {"control": "tiny-gpt2", "candidate": "tiny-gpt2-b"}[body["variant"]]


def test_the_experiments_route_reports_the_counts(split: dict) -> None:
    variants = Counter(r.headers["x-model-variant"] for r in split["responses"])
    before, after = split["before"], split["after"]
    for name in ("control", "candidate"):
        assert after[name]["requests"] - before[name]["requests"] == variants[name]
        assert after[name]["errors"] == before[name]["errors"]
    report = split["report"]["variants"]  # one replica's: it counted some of the thousand
    for name in ("control", "candidate"):
        assert report[name]["p50_ms"] > 0 and report[name]["p95_ms"] >= report[name]["p50_ms"]
    assert (report["control"]["share"], report["candidate"]["share"]) == (0.9, 0.1)
    assert report["candidate"]["deployment"] == "text-b"


def test_a_user_keeps_their_variant_and_a_request_may_pin_one(split: dict, base_url: str) -> None:
    first = {r.json()["variant"] for r in split["responses"][:20]}
    again = complete_as(base_url, [f"ab-user-{n}" for n in range(20)])
    assert [r.json()["variant"] for r in again] == [r.json()["variant"] for r in split["responses"][:20]]
    assert first  # the same users, the same variants
    oai = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    for model, variant in (("tiny-gpt2-b", "candidate"), ("candidate", "candidate"), ("tiny-gpt2", "control")):
        raw = oai.completions.with_raw_response.create(model=model, prompt="Hi", max_tokens=1, user="ab-user-1")
        assert raw.headers["x-model-variant"] == variant


def test_content_records_its_variant_and_engagement_is_attributed(client: httpx.Client) -> None:
    record = client.post("/v1/content", json={"topic": "tides and moons", "user_id": "ab-user-7"}).json()
    assert record["status"] == "complete"
    variant = record["variants"]["article"]
    assert variant["experiment"] == "text-v2" and variant["variant"] in ("control", "candidate")
    assert record["models"]["article"] == {"control": "tiny-gpt2", "candidate": "tiny-gpt2-b"}[variant["variant"]]
    before = experiment_report(client)["variants"][variant["variant"]]
    like = {"user_id": "ab-fan", "item_id": record["id"], "event": "like"}
    assert client.post("/v1/interactions", json=like).status_code == 202
    after = experiment_report(client)["variants"][variant["variant"]]
    assert after["contents"] >= 1 and after["interactions"] == before["interactions"] + 1


def test_weights_change_in_place_without_dropping_requests(
    base_url: str, client: httpx.Client, deployed_app: dict, redeploy
) -> None:
    since = {replica: body["since"] for replica, body in every_replicas_report().items()}
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        n = 0
        with httpx.Client(base_url=base_url, timeout=60) as own:
            while not stop.is_set():
                n += 1
                body = {"prompt": "x", "max_tokens": 1, "user": f"load-{n}"}
                statuses.append(own.post("/v1/completions", json=body).status_code)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        config = copy.deepcopy(deployed_app["config"])
        ingress = next(d for d in config["applications"][0]["deployments"] if d["name"] == "ingress")
        variants = ingress["user_config"]["experiments"]["text-v2"]["variants"]
        variants["control"]["weight"], variants["candidate"]["weight"] = 50, 50
        redeploy(config)
        deadline = time.monotonic() + 60

        def shares() -> set[float]:  # the candidate's share as every ingress replica applies it
            return {
                next(e for e in body["experiments"] if e["name"] == "text-v2")["variants"]["candidate"]["share"]
                for body in every_replicas_report().values()
            }

        while time.monotonic() < deadline and shares() != {0.5}:
            time.sleep(1)
        assert shares() == {0.5}
        time.sleep(2)  # some load on the new weights
    finally:
        stop.set()
        worker.join()
    assert statuses and set(statuses) == {200}, Counter(statuses)
    after = {replica: body["since"] for replica, body in every_replicas_report().items()}
    assert after == since  # the same ingress replicas: no restart
    responses = complete_as(base_url, [f"ab-user-{n}" for n in range(400)])
    share = sum(r.headers["x-model-variant"] == "candidate" for r in responses) / 400
    assert 0.4 < share < 0.6
