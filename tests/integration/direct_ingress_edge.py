"""The C edge straight onto the ingress replicas (Serve's direct ingress), on a Ray instance of its own: direct
ingress is switched per Ray instance (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1`` before Ray starts), which the
session's cluster is not. Run by ``test_edge.py`` in a subprocess as
``python -m tests.integration.direct_ingress_edge REPORT.json`` with that variable set; writes the JSON report
the test asserts on.

What it does: an app of two ingress replicas (each answers which replica it is, after a short wait, so that
concurrent requests overlap) and the edge application; waits until the edge fronts both replicas' own ports;
reads what those ports listen on; sends concurrent requests through the edge; then kills one ingress replica
outright under load by clients that resend a refusal after its ``Retry-After`` (as the openai client does), and
reports every answer, what the edge fronts afterwards, and what is left listening after Serve shuts down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from app.builder import build_edge
from app.deploy import free_port
from tests.integration.own_cluster import ResendingClients, alive, running, wait_for

WAIT_S = 1.0  # each answer's wait: concurrent requests overlap, so the edge must spread them


def at_once(url: str, count: int = 8) -> list[list[Any]]:
    """``count`` requests sent together: each answer's status and the replica that gave it."""
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(lambda _: httpx.get(url, timeout=30), range(count)))
    return [[r.status_code, r.json().get("replica")] for r in answers]


def main() -> dict[str, Any]:
    import ray
    from ray import serve
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    report: dict[str, Any] = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})

        @serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.1})
        class Which:
            """Answers with its replica's id after ``WAIT_S``."""

            async def __call__(self, request: Any) -> dict[str, str]:
                await asyncio.sleep(WAIT_S)
                return {"replica": serve.get_replica_context().replica_id.unique_id}

        serve.run(Which.bind(), name="app", route_prefix="/")
        config = {"port": free_port(), "app": "app", "refresh_s": 0.5, "retry_after_s": 1}
        serve.run(build_edge(config), name="edge", route_prefix=None)
        edge = serve.get_deployment_handle("edge", "edge")

        def fronting(count: int) -> Any:
            def read() -> list[str]:
                edges = running(edge.describe.remote().result())
                ours = next(iter(edges.values()), {})
                return ours.get("upstreams", []) if ours.get("direct_ingress") else []

            return wait_for(lambda: {a: a for a in read()}, count, f"the edge fronting {count} ingress replicas")

        upstreams = sorted(fronting(2))
        report["upstreams"] = upstreams
        report["replica_listening"] = sorted(
            [c.laddr.ip, c.laddr.port]
            for c in psutil.net_connections("inet")
            if c.status == "LISTEN" and f"{c.laddr.ip}:{c.laddr.port}" in upstreams
        )
        url = f"http://127.0.0.1:{config['port']}"
        report["concurrent"] = at_once(url)

        # One ingress replica killed outright while clients send through the edge: every request ends in a 200.
        with ResendingClients(url) as clients:
            time.sleep(2)
            controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
            details = ray.get(controller.get_serve_instance_details.remote())
            doomed = details["applications"]["app"]["deployments"]["Which"]["replicas"][0]
            ray.kill(ray.get_actor(doomed["actor_name"], namespace=SERVE_NAMESPACE), no_restart=True)
            report["killed"] = doomed["replica_id"]

            def targets() -> dict[str, str]:  # the app's ingress replicas with a port, as the controller lists them
                groups = ray.get(controller.get_target_groups.remote("app"))
                found = {t.name: f"127.0.0.1:{t.port}" for g in groups if g.app_name == "app" for t in g.targets}
                return found if len(found) == 2 and doomed["actor_name"] not in found else {}

            replacement = wait_for(targets, 2, "a replacement ingress replica with its port")
            wait_for(lambda: {a: a for a in fronting(2) if a in replacement.values()}, 2, "the edge fronting it")
            report["upstreams_after"] = sorted(replacement.values())
            time.sleep(2)  # load on what remains
        report["after_loss"] = clients.report()
        report["concurrent_after"] = at_once(url)
        pids = [e["pid"] for e in running(edge.describe.remote().result()).values()]
        serve.shutdown()
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        report["left_running_after_shutdown"] = [pid for pid in pids if alive(pid)]
    finally:
        ray.shutdown()
    return report


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(main()))
