"""The ingress as a Serve deployment: thin wiring over ``Ingress``, its FastAPI app built in each replica."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from edge.app import create_app
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
        self, handles: dict[str, DeploymentHandle], config: dict[str, Any] | None = None, variants: tuple[str, ...] = ()
    ) -> None:
        super().__init__(handles, config, variants, _app_name())

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self)

    async def check_health(self) -> None:
        """Serve's periodic health check (it runs on the replica's event loop, soon after start): the edge starts
        reading the services' capacities here, so the first burst after a start is capped like any later one."""
        self.admission.start()
