"""One Ray instance per test session, with the app deployed from ``configs/local.yaml`` as users deploy it.

The config is deployed with the real ``serve deploy`` CLI against the session's own Ray dashboard. What differs
from the file in the repo: a free HTTP port; ``CONTENT_STUDIO_ROOT`` pointing at this session's tiny models and
data, so tests neither collide with a running ``make run`` nor write into the checkout; and, where this machine
runs them (it does, and so does CI), real servers: the catalog and the recommender's store each in a PostgreSQL
database of its own (fresh names per session, dropped at the end), reached through a TCP proxy the tests can
cut, their URLs given as secrets through the environment (``env:NAME``); and the head node's GCS state in Redis
(Ray's GCS fault tolerance, under a namespace of this session's), so the GCS can be killed and brought back.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.deploy import (
    app_of,
    free_port,
    keep_possible_experiments,
    only,
    serve_cli,
    session_config,
    wait_healthy,
    without_jobs,
)
from tests.conftest import REDIS_URL, redis_reachable
from tests.integration.serve_state import wait_deployments_healthy, wait_rolled_out

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["free_port", "serve_cli", "session_config", "wait_healthy"]  # tests import these from here


# The session's Ray cluster: a CPU-only head (as on KubeRay) and two worker nodes that advertise two GPUs each.
# Ray assigns GPU ids and CUDA_VISIBLE_DEVICES to replicas exactly as on a real cluster; without CUDA the
# models run on the CPU. The CPU-only local profile runs on it like on a laptop.
HEAD = {"num_cpus": 4, "num_gpus": 0}
WORKERS = [{"num_cpus": 2, "num_gpus": 2}, {"num_cpus": 2, "num_gpus": 2}]


def start_cluster() -> dict[str, Any]:
    """Start the multi-node local cluster and connect this process to it as a driver. With Redis on the machine
    the head's GCS keeps its state there (GCS fault tolerance), under a namespace of this session's."""
    import uuid

    import ray
    from ray.cluster_utils import Cluster

    namespace, gcs_env = None, {}
    if redis_reachable() is None:
        namespace = f"content-studio-test-{uuid.uuid4().hex[:8]}"
        host_port = REDIS_URL.split("//", 1)[1].split("/", 1)[0]
        gcs_env = {"RAY_REDIS_ADDRESS": host_port, "RAY_external_storage_namespace": namespace}
    dashboard_port = free_port()
    with environment(gcs_env):  # only the head reads them: another Ray started later (the bench) must not
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                **HEAD,
                "include_dashboard": True,
                "dashboard_host": "127.0.0.1",
                "dashboard_port": dashboard_port,
            },
        )
    workers = [cluster.add_node(**spec) for spec in WORKERS]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    return {
        "dashboard": f"http://127.0.0.1:{dashboard_port}",
        "address": cluster.address,
        "cluster": cluster,
        "head_node_id": cluster.head_node.node_id,
        "worker_node_ids": [w.node_id for w in workers],
        "gcs_namespace": namespace,
        "gcs_env": gcs_env,
    }


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Environment variables set for the block only (and so for the processes it starts)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def stop_cluster(state: dict[str, Any]) -> None:
    """Stop everything: Serve, this driver, and every node (what `ray stop` does on a machine)."""
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    state["cluster"].shutdown()
    if state.get("gcs_namespace"):  # leave nothing of this session in the machine's Redis
        from ray._private.gcs_utils import cleanup_redis_storage

        host, port = state["gcs_env"]["RAY_REDIS_ADDRESS"].rsplit(":", 1)
        cleanup_redis_storage(host, int(port), "", False, state["gcs_namespace"])


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[dict[str, Any]]:
    """One multi-node local Ray cluster for the whole test session (a test marked `restarts_cluster` may
    replace it; the dict is updated in place)."""
    state = start_cluster()
    yield state
    stop_cluster(state)


# After `ray.shutdown()` this driver still runs Ray's native threads (gRPC pollers and timers, the GCS client's
# and the core worker's io threads: 15 counted in /proc/self/task after a session), and Ray offers no way to
# stop them. Interpreter finalization then races them against the C++ libraries' static destructors: two
# fresh-clone runs (0efc8e2, 8dde640) reported every test passed and then died in a segfault, past the point
# where faulthandler can speak. So the session ends the process itself once pytest is done with it: every
# report and cache is written by then, and the status is pytest's own.
_session: list[pytest.Session] = []


def pytest_sessionfinish(session: pytest.Session) -> None:
    _session.append(session)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if not _session:  # pytest stopped before the session ran (a usage error): nothing of Ray's started
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(_session[-1].exitstatus))


@pytest.fixture(scope="session")
def databases() -> Iterator[dict[str, Any]]:
    """The session's databases: PostgreSQL behind a proxy the tests control when the machine runs it (the URLs
    given to the app through the environment), else the local profile's SQLite files."""
    from tests.conftest import PostgresDatabases, postgres_reachable
    from tests.fakes.tcp_proxy import TcpProxy

    why = postgres_reachable()
    if why:
        yield {"kind": "sqlite", "why_not_postgres": why, "env": {}}
        return
    created = PostgresDatabases()
    catalog, recommend, responses = created.create("catalog"), created.create("recommend"), created.create("responses")
    proxy = TcpProxy("127.0.0.1", 5432)

    def through_proxy(url: str) -> str:
        return url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")

    env = {
        "CONTENT_STUDIO_CATALOG_URL": through_proxy(catalog),
        "CONTENT_STUDIO_STORE_URL": through_proxy(recommend),
        "CONTENT_STUDIO_RESPONSES_URL": through_proxy(responses),
    }
    direct = {"catalog": catalog, "recommend": recommend, "responses": responses}
    yield {"kind": "postgresql", "proxy": proxy, "direct": direct, "env": env}
    proxy.close()
    created.drop_all()


def extra_app(config: dict[str, Any], name: str, services: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A copy of the session's application as a second app ``name`` at ``/name``, for a test to change freely;
    without the A/B candidate (its deployment, ``args.variants`` and the ingress's experiments): every request
    goes to the service under test; one ingress replica. ``services``: deploy only these (and the ingress), as the
    builder's ``args.services`` allows: a test loads the models it needs, not a whole copy of the app."""
    app = copy.deepcopy(config["applications"][0])
    app["name"], app["route_prefix"] = name, f"/{name}"
    ingress = next(d for d in app["deployments"] if d["name"] == "ingress")
    ingress.update(num_replicas=1)  # one is enough for a test's copy; the session's app runs the profile's two
    variants = {n for names in app.setdefault("args", {}).pop("variants", {}).values() for n in names}
    app["deployments"] = [d for d in app["deployments"] if d["name"] not in variants]
    return only(app, services) if services is not None else keep_possible_experiments(without_jobs(app))


def slow_writing(config: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The session's config with its text services (the text experiment's candidate too) writing at a production
    model's pace, ``seconds`` between streamed items: the tiny model writes a whole article faster than the voice
    says its title, which hides what streaming across services does."""
    config = copy.deepcopy(config)
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] in ("text", "text-b"):
            deployment["user_config"].setdefault("faults", {})["stream_delay_s"] = seconds
    return config


def with_app(deployed_app: dict, app: dict) -> dict:
    """The session's config plus ``app``, which runs with the session's environment (models, data folder)."""
    config = copy.deepcopy(deployed_app["config"])
    app = copy.deepcopy(app)
    app["runtime_env"] = copy.deepcopy(app_of(config)["runtime_env"])
    config["applications"].append(app)
    return config


def use_databases(config: dict[str, Any], databases: dict[str, Any]) -> dict[str, Any]:
    """Point the app's stores at the session's databases: ``env:`` URLs, the secrets in the app's environment."""
    if databases["kind"] != "postgresql":
        return config
    for app in config["applications"]:
        app["runtime_env"]["env_vars"].update(databases["env"])
        for deployment in app["deployments"]:
            user = deployment.get("user_config", {})
            if deployment["name"] == "pipeline":
                user["catalog_url"] = "env:CONTENT_STUDIO_CATALOG_URL"
                user["relay"] = {"interval_s": 0.5, "retry_s": 0.5, "max_retry_s": 2.0, "claim_s": 5.0}
            if deployment["name"] == "recommend":
                user["store_url"] = "env:CONTENT_STUDIO_STORE_URL"
            if deployment["name"] == "ingress":
                user.setdefault("responses", {})["store_url"] = "env:CONTENT_STUDIO_RESPONSES_URL"
    return config


@pytest.fixture(scope="session")
def broker() -> Iterator[dict[str, str] | None]:
    """The content jobs' broker for this session: the machine's Redis, under a queue of this session's (its keys
    deleted at the end); None when the machine has no Redis (the job tests are skipped)."""
    import uuid

    import redis

    if redis_reachable() is not None:
        yield None
        return
    queue = f"content-jobs-test-{uuid.uuid4().hex[:8]}"
    yield {"broker_url": REDIS_URL, "queue_name": queue}
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(queue, f"_kombu.binding.{queue}")


def drain_jobs(base_url: str, timeout: float = 180) -> None:
    """Cancel every job still queued or running and wait until none runs: a test that made jobs in bulk (the
    schemathesis run) leaves no content being made behind it for the next test to count."""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = [
                job
                for state in ("queued", "running")
                for job in client.get("/v1/jobs", params={"state": state, "limit": 500}).json()
            ]
            if not left:
                return
            for job in left:
                client.delete(f"/v1/jobs/{job['id']}")
            time.sleep(1)
    raise TimeoutError(f"jobs still queued or running after {timeout}s")


def use_broker(config: dict[str, Any], broker: dict[str, str] | None, databases: dict[str, Any]) -> dict[str, Any]:
    """Point the app's content jobs at the session's broker and catalog database (no broker: no jobs)."""
    app = config["applications"][0]
    if broker is None:
        without_jobs(app)
        return config
    jobs = app["args"]["jobs"]
    # A dead consumer's job delivered again, and a dead run's job taken over, within seconds (not an hour).
    # Five attempts: the chaos run kills every deployment a job uses within half a minute.
    jobs.update(broker, lease_s=6.0, retry_backoff_s=0.5, visibility_timeout_s=15, restore_interval_s=2, max_attempts=5)
    if databases["kind"] == "postgresql":
        jobs["store_url"] = "env:CONTENT_STUDIO_CATALOG_URL"
    consumer = next(d for d in app["deployments"] if d["name"] == "jobs")
    consumer["autoscaling_config"]["policy"]["policy_kwargs"].update(broker)
    return config


# Deployments a test scales out to replicas on distinct nodes (test_postgres_data): at most one per node from the
# start (the session cluster has three), so that scaling out and back is a lightweight update (replica counts),
# not a placement change that replaces every replica of both, going and coming back. (Most of that test's 180 s
# before was another restart: removing an autoscaling config changes the app's code version; see the test.)
ONE_PER_NODE = ("pipeline", "recommend")


def one_per_node(config: dict[str, Any]) -> dict[str, Any]:
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] in ONE_PER_NODE:
            deployment["max_replicas_per_node"] = 1
    return config


@pytest.fixture(scope="session")
def deployed_app(
    ray_cluster: dict[str, Any],
    project_root: Path,
    databases: dict[str, Any],
    broker: dict[str, str] | None,
    tmp_path_factory,
) -> dict:
    """The local profile deployed with ``serve deploy``; yields its URL, config and the dashboard address."""
    port = free_port()
    config = use_databases(session_config(ROOT / "configs" / "local.yaml", project_root, port), databases)
    config = one_per_node(use_broker(config, broker, databases))
    path = tmp_path_factory.mktemp("serve") / "local.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_cli("deploy", str(path), dashboard=ray_cluster["dashboard"])
    url = f"http://127.0.0.1:{port}"
    health = wait_healthy(url)
    return {"url": url, "config": config, "config_path": path, "health": health, "databases": databases, **ray_cluster}


@pytest.fixture(scope="session")
def base_url(deployed_app: dict) -> str:
    return deployed_app["url"]


@pytest.fixture(scope="session")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as session:
        yield session


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
    # Tests that disturb the cluster go last (the GCS one, then the one that stops everything), so that every
    # other test shares one Ray instance undisturbed.
    items.sort(
        key=lambda item: (
            item.get_closest_marker("restarts_cluster") is not None,
            item.get_closest_marker("late") is not None,
        )
    )


os.environ.setdefault("RAY_DEDUP_LOGS", "1")
# Ray 2.60 turns on token authentication for new local clusters; the `serve` CLI (a subprocess) only sends the
# token when the mode is set explicitly. The test cluster listens on loopback only: keep it simple and off.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Serve's direct ingress, as `make run` and every cluster profile start Ray: the ingress replicas serve HTTP on
# ports of their own and the edge fronts them, with no Python proxy on the path (docs/edge.md). It is per Ray
# cluster (every node's processes read it), so it is set for every node this session starts, joiners included.
# A stopping ingress replica stays reachable 1 s (3 s in `make run`): the suite stops and starts many, and a
# connection refused meanwhile is retried by the edge on another replica.
DIRECT_INGRESS = {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}
os.environ.update(DIRECT_INGRESS)


def serve_deploy(config: dict[str, Any], dashboard: str) -> None:
    """What ``serve deploy`` does, in this process: the config validated by Serve's schema, then sent to the
    dashboard's REST API (as the CLI, and KubeRay, send it). The session's first deploy goes through the CLI
    itself; its Python start (3 s on an idle machine here) is left out of the forty redeploys after it."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    ServeSubmissionClient(dashboard).deploy_applications(schema.model_dump(exclude_unset=True))


@pytest.fixture()
def redeploy(deployed_app: dict):
    """Deploy a changed config as an operator would (``serve_deploy``); restores the session's config after the
    test (apps the test added are removed; changed deployments go back)."""
    changed = False

    def apply(config: dict, app: str | None = None, healthy: tuple[str, ...] = ()) -> None:
        nonlocal changed
        changed = True
        serve_deploy(config, deployed_app["dashboard"])
        if app:
            wait_deployments_healthy(app, healthy)

    yield apply
    if changed:
        serve_deploy(deployed_app["config"], deployed_app["dashboard"])
        wait_rolled_out()  # the next test starts on the session's app, not in the middle of its rolling update
        wait_healthy(deployed_app["url"])
