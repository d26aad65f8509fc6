"""Production data on a real PostgreSQL: each service in its own database, replicas on different nodes writing at
once, a database that goes away (cut at a proxy the test controls) and comes back, and the catalog's outbox
delivering registrations to the recommender once it is back."""

from __future__ import annotations

import asyncio
import copy
import itertools
import time

import httpx
import pytest
import sqlalchemy as sa

from tests.integration.conftest import ONE_PER_NODE
from tests.integration.serve_state import wait_deployments_healthy

APP = "content-studio"


@pytest.fixture()
def pg(deployed_app: dict) -> dict:
    databases = deployed_app["databases"]
    if databases["kind"] != "postgresql":
        pytest.skip(databases["why_not_postgres"])
    return databases


def scalar(url: str, query: str, **params) -> object:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(query), params).scalar()
    finally:
        engine.dispose()


def _deployment(config: dict, name: str) -> dict:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == name)


def test_each_service_owns_its_postgresql_database(client: httpx.Client, pg: dict) -> None:
    health = client.get("/v1/health").json()["services"]["recommend"]
    assert health["store"].startswith("postgresql+psycopg://") and health["store_revision"] == "0002"
    record = client.post("/v1/content", json={"topic": "harbour lights", "user_id": "pg-user"}).json()
    catalog, recommend = pg["direct"]["catalog"], pg["direct"]["recommend"]
    assert scalar(catalog, "SELECT status FROM content WHERE id = :id", id=record["id"]) == "complete"
    assert scalar(catalog, "SELECT version_num FROM alembic_version_catalog") == "0003"
    assert scalar(recommend, "SELECT count(*) FROM items WHERE item_id = :id", id=record["id"]) == 1
    # the databases are apart: neither holds the other's tables
    assert scalar(catalog, "SELECT to_regclass('public.interactions') IS NULL")
    assert scalar(recommend, "SELECT to_regclass('public.content') IS NULL")


def test_replicas_on_different_nodes_write_at_once_without_losing_or_doubling_rows(
    client: httpx.Client, deployed_app: dict, redeploy, pg: dict
) -> None:
    from ray.util.state import list_actors

    config = copy.deepcopy(deployed_app["config"])
    for name in ONE_PER_NODE:  # at most one replica per node already: two replicas are on two nodes
        deployment = _deployment(config, name)
        assert deployment["max_replicas_per_node"] == 1
        # Two replicas, as a lightweight update: an autoscaled deployment keeps its autoscaling config (with both
        # bounds at 2), since adding or removing one changes the application's code version (Serve hashes the
        # deployments' autoscaling policies into it), which restarts every replica of the app, going and back.
        if "autoscaling_config" in deployment:
            deployment["autoscaling_config"] |= {"min_replicas": 2, "initial_replicas": 2, "max_replicas": 2}
        else:
            deployment["num_replicas"] = 2
    redeploy(config, app=APP, healthy=("pipeline", "recommend", "ingress"))
    deadline = time.monotonic() + 120
    nodes: dict[str, set[str]] = {}
    while time.monotonic() < deadline:
        alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        nodes = {
            name: {a.node_id for a in alive if a.class_name == f"ServeReplica:{APP}:{name}"} for name in ONE_PER_NODE
        }
        if all(len(ids) == 2 for ids in nodes.values()):
            break
        time.sleep(1)
    assert all(len(ids) == 2 for ids in nodes.values()), nodes  # two replicas each, on two nodes

    catalog, recommend = pg["direct"]["catalog"], pg["direct"]["recommend"]
    contents_before = scalar(catalog, "SELECT count(*) FROM content")
    events_before = scalar(recommend, "SELECT count(*) FROM interactions")

    async def load() -> tuple[list[httpx.Response], list[httpx.Response], list[httpx.Response]]:
        # Every write at once, as many as the local profile's ingress admits together; a refusal for capacity
        # (503, nothing done) is sent again after its Retry-After, as a client would: what is asserted is that no
        # write is lost or doubled, not that a loaded machine takes all of them on the first try.
        gate = asyncio.Semaphore(16)
        async with httpx.AsyncClient(base_url=deployed_app["url"], timeout=120) as http:

            async def send(path: str, body: dict | None = None) -> httpx.Response:
                async with gate:
                    for _ in range(20):
                        response = await http.post(path, json=body)
                        if response.status_code != 503 or "database" in response.text:
                            return response
                        await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                    return response

            contents = [send("/v1/content", {"topic": f"tide {n}", "user_id": f"w{n}"}) for n in range(6)]
            events = [
                send("/v1/interactions", {"user_id": f"w{n % 7}", "item_id": f"item-{n % 40}", "event": "view"})
                for n in range(60)
            ]
            retrains = [send("/v1/recommend/retrain") for _ in range(4)]
            done = await asyncio.gather(*contents, *events, *retrains)
            return done[:6], done[6:66], done[66:]

    contents, events, retrains = asyncio.run(load())
    assert [r.status_code for r in contents] == [200] * 6
    assert [r.status_code for r in events] == [202] * 60
    ids = [r.json()["id"] for r in contents]
    assert scalar(catalog, "SELECT count(*) FROM content") == contents_before + 6
    assert scalar(catalog, "SELECT count(DISTINCT id) FROM content") == contents_before + 6
    assert scalar(recommend, "SELECT count(*) FROM interactions") == events_before + 60
    for content_id in ids:  # each registered with the recommender exactly once
        assert scalar(recommend, "SELECT count(*) FROM items WHERE item_id = :id", id=content_id) == 1
    # The training lease: one replica at a time. Retrains refused while one runs answer 409; those that ran
    # did not overlap, and each published one version.
    assert {r.status_code for r in retrains} <= {200, 409} and 200 in {r.status_code for r in retrains}
    reports = sorted((r.json() for r in retrains if r.status_code == 200), key=lambda r: r["started_at"])
    for earlier, later in itertools.pairwise(reports):
        assert earlier["finished_at"] <= later["started_at"]
    assert len({r["version"] for r in reports}) == len(reports)


def test_a_database_that_goes_away_is_a_503_and_the_service_recovers_by_itself(client: httpx.Client, pg: dict) -> None:
    stored = client.post("/v1/content", json={"topic": "before the storm", "user_id": "db-user"}).json()
    catalog = pg["direct"]["catalog"]
    count = scalar(catalog, "SELECT count(*) FROM content")
    proxy = pg["proxy"]
    proxy.cut()
    try:
        for method, path, body in (
            ("GET", "/v1/content", None),
            ("GET", f"/v1/content/{stored['id']}", None),
            ("POST", "/v1/interactions", {"user_id": "db-user", "item_id": "item-2", "event": "like"}),
            ("POST", "/v1/content", {"topic": "during the storm", "user_id": "db-user"}),
        ):
            response = client.request(method, path, json=body)
            assert response.status_code == 503, (path, response.text)
            assert int(response.headers["Retry-After"]) >= 1
            assert "database" in response.text
    finally:
        proxy.restore()
    assert scalar(catalog, "SELECT count(*) FROM content") == count  # nothing half-written
    deadline = time.monotonic() + 30
    while client.get("/v1/content", params={"limit": 1}).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)  # the pools reconnect by themselves (pre-ping): nobody restarts anything
    assert client.get(f"/v1/content/{stored['id']}").json() == stored  # what was stored is still there
    assert (
        client.post("/v1/interactions", json={"user_id": "db-user", "item_id": "item-2", "event": "like"}).status_code
        == 202
    )
    assert client.post("/v1/content", json={"topic": "after the storm", "user_id": "db-user"}).status_code == 200


def test_content_made_while_the_recommender_fails_is_registered_once_when_it_is_back(
    client: httpx.Client, deployed_app: dict, redeploy, pg: dict
) -> None:
    config = copy.deepcopy(deployed_app["config"])
    recommend = _deployment(config, "recommend")
    recommend["user_config"]["faults"] = {"error_rate": 1.0}
    redeploy(config, app=APP, healthy=("recommend",))
    record = client.post("/v1/content", json={"topic": "a lighthouse", "user_id": "outbox-user"}).json()
    assert record["article"] and record["image_url"]  # the content is made and stored
    assert set(record["errors"]) == {"recommendations"}  # only the recommendations stage failed
    catalog, store = pg["direct"]["catalog"], pg["direct"]["recommend"]
    pending = "SELECT count(*) FROM outbox WHERE content_id = :id AND delivered_at IS NULL"
    assert scalar(catalog, pending, id=record["id"]) == 1  # owed to the recommender, in the catalog's own database
    assert scalar(store, "SELECT count(*) FROM items WHERE item_id = :id", id=record["id"]) == 0

    recommend["user_config"]["faults"] = {"error_rate": 0.0}
    redeploy(config, app=APP, healthy=("recommend",))
    deadline = time.monotonic() + 60
    while scalar(catalog, pending, id=record["id"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert scalar(catalog, pending, id=record["id"]) == 0  # the relay delivered it
    assert scalar(store, "SELECT count(*) FROM items WHERE item_id = :id", id=record["id"]) == 1  # once
    similar = client.get(f"/v1/items/{record['id']}/similar", params={"k": 3})
    assert similar.status_code == 200  # and the recommender knows it
    wait_deployments_healthy(APP, ("recommend",))
