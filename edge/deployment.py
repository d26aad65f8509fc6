"""The edge's Serve deployments: the ingress (thin wiring over ``Ingress``, its FastAPI app built in each replica)
and the C edge in front of Serve's proxy (thin wiring over ``HAProxyEdge``)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from edge.admission import capacities, serve_details
from edge.app import create_app
from edge.haproxy import CAPPED_ROUTES, EdgeConfig, HAProxyEdge
from edge.ingress import Ingress


def _app_name() -> str | None:
    """The Serve application this replica belongs to (its capacity is read from the controller by app)."""
    try:
        return serve.get_replica_context().app_name
    except Exception:  # outside a replica (unit tests): no capacity to read
        return None


@serve.deployment(name="ingress")
@serve.ingress()
class IngressDeployment(Ingress):
    def __init__(
        self,
        handles: dict[str, DeploymentHandle],
        config: dict[str, Any] | None = None,
        variants: tuple[str, ...] = (),
        jobs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(handles, config, variants, _app_name(), jobs)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self)

    async def check_health(self) -> None:
        """Serve's periodic health check (it runs on the replica's event loop, soon after start): the edge starts
        reading the services' capacities here, so the first burst after a start is capped like any later one."""
        self.admission.start()


@serve.deployment(name="edge", ray_actor_options={"num_cpus": 0})
class EdgeDeployment:
    """HAProxy in front of this node's Serve proxy (``edge.haproxy``): its own Serve application, so that Serve
    restarts it when its health check fails, ``serve deploy`` changes its config in place, and stopping the app
    stops HAProxy. Capacities are re-read from the controller every ``refresh_s`` and applied at runtime."""

    def __init__(self) -> None:
        self.edge: HAProxyEdge | None = None
        self._task: asyncio.Task[None] | None = None
        self.error: str | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = EdgeConfig.model_validate(user_config or {})
        details = await serve_details()
        http = details["http_options"]
        host = "127.0.0.1" if http["host"] in ("0.0.0.0", "::", "") else http["host"]
        route_prefix = details["applications"].get(config.app, {}).get("route_prefix") or "/"
        self.stop()
        self.edge = HAProxyEdge(config, (host, http["port"]), route_prefix)
        await asyncio.to_thread(self.edge.start)
        self._task = asyncio.get_running_loop().create_task(self._refresh(self.edge))

    async def _refresh(self, edge: HAProxyEdge) -> None:
        while True:
            try:
                details = await serve_details()
                capacity = (
                    capacities(details, edge.config.app, tuple(CAPPED_ROUTES))
                    if edge.config.app in details["applications"]
                    else {}
                )
                await asyncio.to_thread(edge.apply, capacity)
                self.error = None
            except Exception as exc:  # the last limits stay; the error shows in `describe`
                self.error = f"{type(exc).__name__}: {exc}"[:200]
            await asyncio.sleep(edge.config.refresh_s)

    def describe(self) -> dict[str, Any]:
        """The HAProxy process, its address and limits, per-service stats from its admin socket."""
        edge = self.edge
        if edge is None or not edge.alive():
            return {"running": False, "error": self.error}
        return {
            "running": True,
            "pid": edge.process.pid,
            "address": f"{edge.config.host}:{edge.config.port}",
            "upstream": f"{edge.upstream[0]}:{edge.upstream[1]}",
            "limits": dict(edge.limits),
            "stats": edge.stats(),
            "error": self.error,
        }

    def check_health(self) -> None:
        if self.edge is None or not self.edge.alive():
            raise RuntimeError("HAProxy is not running")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.edge is not None:
            self.edge.stop()

    def __del__(self) -> None:  # Serve calls it when the replica stops
        self.stop()
