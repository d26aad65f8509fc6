"""One Ray instance per test session, with the app deployed from ``configs/local.yaml`` as users deploy it.

The config is deployed with the real ``serve deploy`` CLI against the session's own Ray dashboard. Two things
differ from the file in the repo: a free HTTP port, and ``CONTENT_STUDIO_ROOT`` pointing at this session's
tiny models and data, so tests neither collide with a running ``make run`` nor write into the checkout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from scripts.serve_local import READY_TIMEOUT_S, free_port, serve_cli, session_config, wait_healthy

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["free_port", "serve_cli", "session_config", "wait_healthy"]  # tests import these from here


# The session's Ray cluster: a CPU-only head (as on KubeRay) and two worker nodes that advertise two GPUs each.
# Ray assigns GPU ids and CUDA_VISIBLE_DEVICES to replicas exactly as on a real cluster; without CUDA the
# models run on the CPU. The CPU-only local profile runs on it like on a laptop.
HEAD = {"num_cpus": 4, "num_gpus": 0}
WORKERS = [{"num_cpus": 2, "num_gpus": 2}, {"num_cpus": 2, "num_gpus": 2}]


def start_cluster() -> dict[str, Any]:
    """Start the multi-node local cluster and connect this process to it as a driver."""
    import ray
    from ray.cluster_utils import Cluster

    dashboard_port = free_port()
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
    }


def stop_cluster(state: dict[str, Any]) -> None:
    """Stop everything: Serve, this driver, and every node (what `ray stop` does on a machine)."""
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    state["cluster"].shutdown()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[dict[str, Any]]:
    """One multi-node local Ray cluster for the whole test session (a test marked `restarts_cluster` may
    replace it; the dict is updated in place)."""
    state = start_cluster()
    yield state
    stop_cluster(state)


@pytest.fixture(scope="session")
def deployed_app(ray_cluster: dict[str, Any], project_root: Path, tmp_path_factory) -> dict:
    """The local profile deployed with ``serve deploy``; yields its URL, config and the dashboard address."""
    port = free_port()
    config = session_config(ROOT / "configs" / "local.yaml", project_root, port)
    path = tmp_path_factory.mktemp("serve") / "local.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_cli("deploy", str(path), dashboard=ray_cluster["dashboard"])
    url = f"http://127.0.0.1:{port}"
    health = wait_healthy(url)
    return {"url": url, "config": config, "config_path": path, "health": health, **ray_cluster}


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
    # A test that stops the whole cluster goes last, so that every other test shares one Ray instance.
    items.sort(key=lambda item: item.get_closest_marker("restarts_cluster") is not None)


os.environ.setdefault("RAY_DEDUP_LOGS", "1")
# Ray 2.60 turns on token authentication for new local clusters; the `serve` CLI (a subprocess) only sends the
# token when the mode is set explicitly. The test cluster listens on loopback only: keep it simple and off.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def wait_deployments_healthy(app: str, deployments: tuple[str, ...], timeout: float = READY_TIMEOUT_S) -> None:
    """Wait until Serve reports these deployments of ``app`` HEALTHY (the app may still be deploying others)."""
    from ray import serve

    deadline = time.monotonic() + timeout
    states: dict = {}
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app)
        states = {name: d.status for name, d in status.deployments.items()} if status else {}
        if all(states.get(name) == "HEALTHY" for name in deployments):
            return
        time.sleep(1)
    raise TimeoutError(f"{app}: {deployments} not all HEALTHY after {timeout}s (last: {states})")


@pytest.fixture()
def redeploy(deployed_app: dict, tmp_path_factory):
    """Deploy a changed config with ``serve deploy``, as an operator would; restores the session's config after
    the test (apps the test added are removed; changed deployments go back)."""
    folder = tmp_path_factory.mktemp("redeploy")
    count = 0

    def apply(config: dict, app: str | None = None, healthy: tuple[str, ...] = ()) -> None:
        nonlocal count
        count += 1
        path = folder / f"config-{count}.yaml"
        path.write_text(yaml.safe_dump(config))
        serve_cli("deploy", str(path), dashboard=deployed_app["dashboard"])
        if app:
            wait_deployments_healthy(app, healthy)

    yield apply
    if count:
        serve_cli("deploy", str(deployed_app["config_path"]), dashboard=deployed_app["dashboard"])
        wait_healthy(deployed_app["url"])
