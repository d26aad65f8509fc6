"""What the integration tests read of Serve's state, and how they wait for it: the replicas each deployment runs
(as the controller counts them, and as each reports itself), and waits for a deploy to roll out. The session's
cluster and app are conftest.py's; this module holds no fixture."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from app.deploy import READY_TIMEOUT_S

# How often the waits below look at Serve's status, and how many looks in a row must agree. The controller's loop
# runs every 0.1 s: two looks a quarter second apart cannot both read what it held before a deploy or a kill.
LOOK_S = 0.25
LOOKS = 2


def until_steady(look: Callable[[], tuple[bool, Any]], timeout: float, what: str) -> None:
    """Return once ``look`` reads done ``LOOKS`` times in a row, ``LOOK_S`` apart; past ``timeout``, raise with
    its last reading. ``look`` returns (done, what it saw)."""
    deadline, steady, seen = time.monotonic() + timeout, 0, None
    while time.monotonic() < deadline:
        done, seen = look()
        steady = steady + 1 if done else 0
        if steady >= LOOKS:
            return
        time.sleep(LOOK_S)
    raise TimeoutError(f"{what} after {timeout}s (last: {seen})")


def wait_deployments_healthy(app: str, deployments: tuple[str, ...], timeout: float = READY_TIMEOUT_S) -> None:
    """Wait until Serve reports these deployments of ``app`` HEALTHY (the app may still be deploying others)."""
    from ray import serve

    def look() -> tuple[bool, dict[str, str]]:
        status = serve.status().applications.get(app)
        states = {name: d.status for name, d in status.deployments.items()} if status else {}
        return all(states.get(name) == "HEALTHY" for name in deployments), states

    until_steady(look, timeout, f"{app}: {deployments} not all HEALTHY")


def wait_rolled_out(timeout: float = READY_TIMEOUT_S) -> None:
    """Wait until every application is RUNNING with every deployment HEALTHY, looks in a row. No pause first: a
    deploy returns once the controller holds its target (Serve's ``apply_config`` runs to its end before the REST
    call answers), and from then every application of the config reads DEPLOYING, and a removed one DELETING, until
    it is done; a deployment in a rolling update reads UPDATING until its last replica is replaced."""
    from ray import serve

    def look() -> tuple[bool, dict[str, Any]]:
        apps = serve.status().applications
        done = all(
            a.status == "RUNNING" and all(d.status == "HEALTHY" for d in a.deployments.values()) for a in apps.values()
        )
        return done, {name: (a.status, {d: s.status for d, s in a.deployments.items()}) for name, a in apps.items()}

    until_steady(look, timeout, "the applications did not settle")


def running_replicas(app: str) -> dict[str, int]:
    """RUNNING replicas per deployment of ``app``, as Serve's controller reports them."""
    from ray import serve

    status = serve.status().applications[app]
    return {name: d.replica_states.get("RUNNING", 0) for name, d in status.deployments.items()}


def replica_reports(app: str, deployment: str, timeout: float = 60, method: str = "describe") -> dict[str, dict]:
    """Every running replica's own report (``method``, a dict naming its ``replica``), by replica id: asked through
    a handle until as many replicas answered as Serve reports RUNNING. The calls of a round go out together: the
    router sends each to the least loaded of two replicas, so one at a time they would all go to an idle replica
    while another is kept busy (by a test's load, say); together they fill the idle one's count and spill over."""
    from ray import serve

    handle = serve.get_deployment_handle(deployment, app)
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = running_replicas(app)[deployment]
        for response in [getattr(handle, method).remote() for _ in range(4 * running)]:
            info = response.result(timeout_s=30)
            seen[info["replica"]] = info
        if len(seen) >= running:
            return seen
    raise TimeoutError(f"{app}/{deployment}: {len(seen)} replicas answered, {running_replicas(app)[deployment]} run")


def wait_serving_version(version: str, app: str = "content-studio", timeout: float = 60) -> None:
    """Until every running recommend replica serves ``version`` (each swaps within its ``refresh_s``)."""
    deadline = time.monotonic() + timeout
    versions: dict[str, str] = {}
    while time.monotonic() < deadline:
        versions = {replica: info["model_version"] for replica, info in replica_reports(app, "recommend").items()}
        if set(versions.values()) == {version}:
            return
        time.sleep(0.5)
    raise TimeoutError(f"not every recommend replica serves {version} after {timeout}s: {versions}")


def replica_ids(app: str) -> dict[str, set[str]]:
    """The live replicas of each deployment of ``app``, by id (from the named replica actors)."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#"
    ids: dict[str, set[str]] = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith(prefix):
            deployment, replica = actor["name"][len(prefix) :].split("#", 1)
            ids.setdefault(deployment, set()).add(replica)
    return ids
