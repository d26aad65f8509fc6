"""The edge's Serve deployments: the ingress (thin wiring over ``Ingress``, its FastAPI app built in each replica)
and the C edge on every node that serves HTTP, in front of the ingress replicas (direct ingress) or Serve's
proxy (thin wiring over ``HAProxyEdge`` and ``edge.nodes``)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from edge.admission import capacities, ingress_targets, serve_details, shares
from edge.app import create_app
from edge.haproxy import CAPPED_ROUTES, EdgeConfig, HAProxyEdge
from edge.ingress import Ingress
from edge.nodes import EdgePlace, edge_places, other_prefixes, upstreams


def _replica() -> tuple[str | None, str | None]:
    """The Serve application this replica belongs to (its capacity is read from the controller by app) and the
    replica's id (its per-replica counts say whose they are)."""
    try:
        context = serve.get_replica_context()
        return context.app_name, context.replica_id.unique_id
    except Exception:  # outside a replica (unit tests): no capacity to read
        return None, None


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
        app_name, replica = _replica()
        super().__init__(handles, config, variants, app_name, jobs)
        self.stats.replica = replica

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self)

    async def check_health(self) -> None:
        """Serve's periodic health check (it runs on the replica's event loop, soon after start): the edge starts
        reading the services' capacities here, so the first burst after a start is capped like any later one."""
        self.admission.start()


class NodeEdge:
    """One node's HAProxy (``HAProxyEdge``), in an actor pinned to that node: it lives as long as its owner (the
    edge replica) and its node, and HAProxy dies with it (``PR_SET_PDEATHSIG``)."""

    def __init__(self, config: dict[str, Any], place: EdgePlace, route_prefix: str) -> None:
        config = EdgeConfig.model_validate(config).model_copy(update={"port": place.port})
        self.place = place
        self.edge = HAProxyEdge(config, place.upstream, route_prefix)
        self.edge.start()

    def stop(self) -> None:
        """Stop HAProxy (its port is free when this returns) and remove its folder."""
        self.edge.stop()

    def apply(self, share: dict[str, int | None], servers: list[tuple[str, int]], others: list[str]) -> dict[str, int]:
        """Front these servers (``edge.nodes.upstreams``) with this edge's share of every service's capacity, and
        pass the other applications' route prefixes (``edge.nodes.other_prefixes``) to the node's Serve proxy."""
        if not self.edge.alive():
            raise RuntimeError("HAProxy is not running")
        self.edge.route(servers)
        self.edge.others(others)
        return self.edge.apply(share)

    def describe(self) -> dict[str, Any]:
        edge = self.edge
        servers = [a for a in edge.upstreams if a is not None]
        return {
            "running": edge.alive(),
            "pid": edge.process.pid if edge.process else None,
            "address": f"{edge.config.host}:{edge.config.port}",
            "upstreams": [f"{a[0]}:{a[1]}" for a in servers],
            "direct_ingress": servers != [self.place.upstream],  # else Serve's proxy
            "other_prefixes": list(edge.other_prefixes),  # passed to Serve's proxy
            "limits": dict(edge.limits),
            "stats": edge.stats() if edge.alive() else {},
        }


async def answer(ref: Any, timeout_s: float = 15.0) -> Any:
    """A ``NodeEdge``'s answer, or TimeoutError: an edge whose node is gone must not stall the others' caps."""

    async def wait() -> Any:
        return await ref

    return await asyncio.wait_for(wait(), timeout_s)


async def retire(actor: Any) -> None:
    """Stop a ``NodeEdge``'s HAProxy, freeing its port for the next one, then end the actor (a dead one is gone)."""
    with contextlib.suppress(Exception):
        await answer(actor.stop.remote(), timeout_s=10.0)
    with contextlib.suppress(Exception):
        ray.kill(actor)


@serve.deployment(name="edge", ray_actor_options={"num_cpus": 0})
class EdgeDeployment:
    """The C edge on every node that serves HTTP (``edge.nodes``): this one replica keeps a ``NodeEdge`` on each
    node with a Serve proxy, as nodes come and go, and caps them all every ``refresh_s`` with their shares of the
    services' capacities. An application of its own, so that Serve restarts it when its health check fails (its
    edges go with the old replica and come back with the new one), ``serve deploy`` changes its config in place,
    and stopping the app stops every HAProxy."""

    def __init__(self) -> None:
        self.config = EdgeConfig()
        self.edges: dict[str, tuple[EdgePlace, Any]] = {}  # node id -> its place and its NodeEdge actor
        self._task: asyncio.Task[None] | None = None
        self.error: str | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = EdgeConfig.model_validate(user_config or {})
        if self._task is not None:
            self._task.cancel()
        await asyncio.gather(*(retire(actor) for _, actor in self.edges.values()))  # their ports are free
        self.edges.clear()
        self.config = config
        for _ in range(10):  # the first edges are up before Serve calls this replica ready
            await self.tend()
            if not self.error:
                break
            await asyncio.sleep(1)  # a port still held by a predecessor that is exiting
        else:
            raise RuntimeError(f"the edge did not start: {self.error}")
        self._task = asyncio.get_running_loop().create_task(self._tend_forever())

    async def _tend_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_s)
            await self.tend()

    async def tend(self) -> None:
        """One round: an edge on each node with a proxy (none on a node that left), every edge capped at its share;
        an edge that died is replaced on the next round. Errors stay in ``describe`` (the last caps stay)."""
        try:
            details = await serve_details()
            config = self.config
            places = edge_places(details, config.port, {node: place for node, (place, _) in self.edges.items()})
            for node in set(self.edges) - set(places):
                await retire(self.edges.pop(node)[1])
            route_prefix = details["applications"].get(config.app, {}).get("route_prefix") or "/"
            for node, place in places.items():
                if node not in self.edges:
                    self.edges[node] = (place, self._start(node, place, route_prefix))
            known = config.app in details["applications"]
            capacity = capacities(details, config.app, tuple(CAPPED_ROUTES)) if known else {}
            share = shares(capacity, len(self.edges))
            targets = await ingress_targets(config.app) if known else []
            others = other_prefixes(details, config.app)
            nodes = list(self.edges)
            results = await asyncio.gather(
                *(
                    answer(
                        self.edges[node][1].apply.remote(
                            share, upstreams(self.edges[node][0], details, targets), others
                        )
                    )
                    for node in nodes
                ),
                return_exceptions=True,
            )
            failed = {node: r for node, r in zip(nodes, results, strict=True) if isinstance(r, BaseException)}
            for node in failed:  # dead, or its HAProxy is: replaced next round
                await retire(self.edges.pop(node)[1])
            self.error = "; ".join(f"{node[:8]}: {type(e).__name__}: {e}"[:200] for node, e in failed.items()) or None
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"[:200]

    def _start(self, node: str, place: EdgePlace, route_prefix: str) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor = ray.remote(NodeEdge).options(
            num_cpus=0,
            max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        )
        return actor.remote(self.config.model_dump(mode="json"), place, route_prefix)

    async def describe(self) -> dict[str, Any]:
        """Every node's edge (its HAProxy, address, upstream, limits, per-service stats from its admin socket)."""
        nodes = list(self.edges)
        answers = await asyncio.gather(
            *(answer(self.edges[node][1].describe.remote()) for node in nodes), return_exceptions=True
        )
        edges = {
            node: a if not isinstance(a, BaseException) else {"running": False, "error": f"{type(a).__name__}"}
            for node, a in zip(nodes, answers, strict=True)
        }
        return {"running": any(e["running"] for e in edges.values()), "edges": edges, "error": self.error}

    def check_health(self) -> None:
        if not self.edges or (self._task is not None and self._task.done()):
            raise RuntimeError(f"no edge is running: {self.error}")

    def __del__(self) -> None:  # Serve calls it when the replica stops; the kernel then ends each HAProxy
        if self._task is not None:
            self._task.cancel()
        for _, actor in self.edges.values():
            with contextlib.suppress(Exception):
                ray.kill(actor)
