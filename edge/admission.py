"""Load shed at the edge, at once: the ingress admits to a service only what the service can hold.

A service holds its running replicas x (``max_ongoing_requests`` + ``max_queued_requests``), read from the Serve
controller and shared out among the ingress replicas; the rest is refused with 503 + ``Retry-After`` at once,
instead of letting a burst wait in queues to be refused seconds later.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from deployments.errors import Unavailable
from deployments.registry import INGRESS


class EdgeAdmission:
    """In-flight calls per service, capped at what the service can hold (see the module docstring)."""

    def __init__(self, app: str | None, deployments: tuple[str, ...], config: Any) -> None:
        self.app, self.deployments = app, deployments
        self.config = config  # the ingress's: retry_after_s, capacity_refresh_s
        self.capacity: dict[str, int | None] = {}
        self.inflight: dict[str, int] = defaultdict(int)
        self.details = serve_details  # the controller's view; injected in unit tests
        self._task: asyncio.Task[None] | None = None
        self.error: str | None = "not read from the Serve controller yet"

    def start(self) -> None:
        if self.app and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            try:
                self.capacity = self.read(await self.details())
                self.error = None
            except Exception as exc:  # no cap is better than refusing everything
                self.error = f"{type(exc).__name__}: {exc}"[:200]
            await asyncio.sleep(self.config.capacity_refresh_s)

    def read(self, details: dict[str, Any]) -> dict[str, int | None]:
        """Each deployment's share of capacity for this ingress replica: the app's capacity (``capacities``)
        split among the running ingress replicas."""
        return shares(capacities(details, self.app, self.deployments), running_replicas(details, self.app, INGRESS))

    @contextlib.contextmanager
    def enter(self, deployment: str) -> Iterator[None]:
        """Hold a place for one call to ``deployment``, or refuse it at once (503 + Retry-After) when full."""
        capacity = self.capacity.get(deployment)
        if capacity is not None and self.inflight[deployment] >= capacity:
            raise Unavailable(
                f"{deployment} is at capacity ({capacity} requests in flight through this ingress): retry later",
                retry_after_s=self.config.retry_after_s,
            )
        self.inflight[deployment] += 1
        try:
            yield
        finally:
            self.inflight[deployment] -= 1

    def describe(self) -> dict[str, Any]:
        return {"capacity": dict(self.capacity), "inflight": dict(self.inflight), "error": self.error}


def running_replicas(details: dict[str, Any], app: str, deployment: str) -> int:
    deployments = details["applications"][app]["deployments"]
    return sum(r["state"] == "RUNNING" for r in deployments.get(deployment, {}).get("replicas", []))


def capacities(details: dict[str, Any], app: str, deployments: tuple[str, ...]) -> dict[str, int | None]:
    """What each deployment of ``app`` can hold, from the Serve controller's view (``get_serve_instance_details``):
    running replicas x (max_ongoing_requests + max_queued_requests). None: no cap (an unbounded queue, or no
    replica running: then Serve queues until one is, within timeouts). The ingress and the C edge both cap by it."""
    known = details["applications"][app]["deployments"]
    out: dict[str, int | None] = {}
    for name in deployments:
        config = known.get(name, {}).get("deployment_config", {})
        queued = config.get("max_queued_requests", -1)
        replicas = running_replicas(details, app, name)
        if queued is None or queued < 0 or replicas == 0:
            out[name] = None
        else:
            out[name] = replicas * (config.get("max_ongoing_requests", 5) + queued)
    return out


def shares(capacity: dict[str, int | None], holders: int) -> dict[str, int | None]:
    """Each of ``holders``' share of every service's capacity (None: no cap), at least one place each: the ingress
    replicas share it, and so do the C edges of the nodes (together they admit what the service holds)."""
    n = max(1, holders)
    return {name: None if cap is None else max(1, math.ceil(cap / n)) for name, cap in capacity.items()}


def _controller() -> Any:
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    return ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)


async def serve_details() -> dict[str, Any]:
    """The Serve controller's view of every application (what ``serve status`` shows), from inside a replica."""
    return await _controller().get_serve_instance_details.remote()


async def ingress_targets(app: str) -> list[tuple[str, int]]:
    """The ``ip:port`` of every running ingress replica's own HTTP server (Serve's direct ingress), from the
    controller's target groups; none when direct ingress is off (the groups then hold Serve's proxies, app "")."""
    groups = await _controller().get_target_groups.remote(app)
    return [
        (target.ip, target.port)
        for group in groups
        if group.app_name == app and getattr(group.protocol, "value", group.protocol) == "HTTP"
        for target in group.targets
    ]
