"""The recommender learns in the running app: new content is recommendable at once, retraining drops nothing."""

from __future__ import annotations

import threading
import time

import httpx

from offline.interactions import TOPICS
from offline.tiny_models import N_COMMUNITIES, N_USERS
from tests.integration.serve_state import replica_reports, wait_serving_version

APP = "content-studio"


def test_new_content_is_similar_and_recommended_before_any_interaction(client: httpx.Client) -> None:
    community = 0
    topic = " ".join(TOPICS[community])  # what the seed items of community 0 are about
    record = client.post("/v1/content", json={"topic": topic}).json()
    assert record["status"] == "complete", record
    content_id = record["id"]

    # Other contents may rank nearer still (their bodies share the tiny random model's words, and the suite makes
    # dozens): the claim is about the seed items, so the neighbours are read as far as the API allows and the
    # seed items among them compared with each other, whatever else the catalogue holds.
    similar = client.get(f"/v1/items/{content_id}/similar", params={"k": 100})
    assert similar.status_code == 200, similar.text
    neighbours = similar.json()["items"]
    assert neighbours and all(item["score"] > 0 for item in neighbours)
    seed = [i["item_id"] for i in neighbours if i["item_id"].startswith("item-")][:5]
    assert len(seed) >= 3, neighbours
    communities = [int(item_id.split("-")[1]) % N_COMMUNITIES for item_id in seed]
    counts = {c: communities.count(c) for c in set(communities)}
    assert counts.get(community, 0) >= 2 and counts[community] == max(counts.values()), (counts, neighbours)

    reached = []
    for user in range(community, N_USERS, N_COMMUNITIES):
        items = client.get("/v1/recommendations", params={"user_id": f"user-{user}", "k": 10}).json()["items"]
        reached += [item for item in items if item["item_id"] == content_id]
    assert reached, "no user of the topic's community was recommended the new content"
    assert {item["reason"] for item in reached} == {"content"}


def test_retraining_under_load_drops_no_request_and_every_answer_moves_to_the_new_version(
    client: httpx.Client, base_url: str
) -> None:
    client.post(
        "/v1/interactions/batch",
        json={"events": [{"user_id": f"learner-{n}", "item_id": "item-2", "event": "like"} for n in range(10)]},
    ).raise_for_status()
    versions_before = {info["model_version"] for info in replica_reports(APP, "recommend").values()}

    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:  # a steady reader, as users are: one request at a time, a short pause between
        with httpx.Client(base_url=base_url, timeout=60) as own:
            n = 0
            while not stop.is_set():
                n += 1
                statuses.append(own.get("/v1/recommendations", params={"user_id": f"user-{n % 60}"}).status_code)
                time.sleep(0.05)

    workers = [threading.Thread(target=load) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        report = client.post("/v1/recommend/retrain")
        assert report.status_code == 200, report.text
        version = report.json()["version"]
        assert version not in versions_before and report.json()["events"] >= 10
        wait_serving_version(version)  # every replica swaps within its refresh_s
        answer = client.get("/v1/recommendations", params={"user_id": "user-1"}).json()
        assert answer["model_version"] == version
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert statuses and set(statuses) == {200}, f"{len(statuses)} requests: {sorted(set(statuses))}"
