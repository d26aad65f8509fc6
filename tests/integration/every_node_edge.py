"""The C edge on every node that serves HTTP, on a Ray cluster of its own: a head and two workers on this host, Serve
with a proxy on every node (``proxy_location: EveryNode``, which the session's cluster cannot switch to), a small
app with a replica on each node, and the edge application. Run by ``test_edge.py`` in a subprocess (its own Ray
driver) as ``python -m tests.integration.every_node_edge REPORT.json``; writes the JSON report the test asserts on.

What it does: waits for an edge per node (three ports on this one host); reads what each listens on and answers;
then a worker node is stopped outright under load through the head's edge, by clients that resend a 503 after its
``Retry-After`` (as the openai client does); it reports every answer, which edges remain, and what is left
listening after Serve shuts down.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from app.builder import build_edge
from app.deploy import free_port
from tests.integration.own_cluster import ResendingClients, alive, listening, running, wait_for


def main() -> dict[str, Any]:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    report: dict[str, Any] = {}
    try:
        serve.start(proxy_location="EveryNode", http_options={"host": "127.0.0.1", "port": free_port()})

        @serve.deployment(num_replicas=3, max_replicas_per_node=1, ray_actor_options={"num_cpus": 0.1})
        class Where:
            """Answers with the node it runs on: a replica on every node keeps every node's proxy serving."""

            async def __call__(self, request: Any) -> dict[str, str]:
                return {"node": ray.get_runtime_context().get_node_id()}

        serve.run(Where.bind(), name="app", route_prefix="/")
        base = free_port()
        config = {"port": base, "app": "app", "refresh_s": 0.5, "retry_after_s": 1}
        serve.run(build_edge(config), name="edge", route_prefix=None)
        edge = serve.get_deployment_handle("edge", "edge")
        edges = wait_for(lambda: running(edge.describe.remote().result()), 3, "an edge on each node")
        report["nodes"] = {"head": cluster.head_node.node_id, "workers": [w.node_id for w in workers]}
        report["edges"] = {node: {**e, "listening": listening(e["pid"])} for node, e in edges.items()}
        report["answers"] = {node: httpx.get(f"http://{e['address']}/", timeout=30).json() for node, e in edges.items()}
        head_edge = edges[cluster.head_node.node_id]["address"]

        # A worker node stopped outright while clients send through the head's edge. They resend what was refused
        # (503, after its Retry-After) or lost with a connection (as the openai client does): every request must
        # end in a 200, only delayed. Each refusal's shape and each lost connection is reported.
        with ResendingClients(f"http://{head_edge}") as clients:
            time.sleep(2)
            doomed = workers[0]
            cluster.remove_node(doomed, allow_graceful=False)
            report["removed"] = doomed.node_id
            survivors = {cluster.head_node.node_id, workers[1].node_id}

            def survivors_only() -> dict[str, Any]:  # the lost node's edge is gone, every other one still runs
                described = edge.describe.remote().result()
                return running(described) if set(described["edges"]) == survivors else {}

            left = wait_for(survivors_only, 2, "the lost node's edge gone")
            time.sleep(3)  # load after the loss, on what remains
        report["after_loss"] = {
            "edges": sorted(left),
            "statuses": clients.statuses,
            "refusals": clients.refusals,
            "lost_connections": clients.lost,
            "failures": clients.failures,
        }
        report["survivor_answers"] = {
            node: httpx.get(f"http://{e['address']}/", timeout=30).status_code for node, e in left.items()
        }
        pids = [e["pid"] for e in left.values()]
        serve.shutdown()
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        report["left_running_after_shutdown"] = [pid for pid in pids if alive(pid)]
    finally:
        ray.shutdown()
        cluster.shutdown()
    return report


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(main()))
