"""Where the C edge runs: one HAProxy on every node that serves HTTP, and what each fronts.

Serve's ``proxy_location`` decides which nodes run a proxy (the head only, or every node); the edge follows it,
read from the controller's view (``proxies``), so a node that joins gets an edge and a node that leaves takes its
edge with it. On a real cluster every node has its own address and every edge the configured port. Several Ray
nodes on one host (the test cluster, ``ray.cluster_utils.Cluster``) share an address: their edges get the port,
the next one, and so on (the head's first), each keeping its port while its node lives. A service's capacity is
shared out among the edges as among the ingress replicas (``edge.admission.shares``): together they admit what it holds.

What an edge fronts (``upstreams``): with Serve's direct ingress on (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1`` at
``ray start``), the application's ingress replicas' own HTTP servers, which the controller lists as target
groups: no Python proxy on the path. Serve binds them on ``http_options.host``: on every interface, an edge
fronts every replica; on loopback (the local profile), only the replicas on its own host. Without direct ingress,
or before a replica has its port, the edge fronts its node's Serve proxy.
An edge fronts one application's ingress replicas; the other applications' route prefixes (``other_prefixes``)
pass to its node's Serve proxy, which routes them.
No Ray here: the Serve wiring is ``edge.deployment``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
GONE = {"DRAINED"}  # a proxy that no longer serves: its node's edge goes too (a draining one is still answered 503)


class EdgePlace(NamedTuple):
    """Where one node's edge listens and where that node's Serve proxy is."""

    node_ip: str
    port: int
    upstream: tuple[str, int]


def edge_places(details: dict[str, Any], base_port: int, kept: dict[str, EdgePlace]) -> dict[str, EdgePlace]:
    """An edge per node with a Serve proxy (``get_serve_instance_details``), by node id: nodes in ``kept`` keep
    their place; a new node takes the lowest port from ``base_port`` up that no other edge on its address holds."""
    proxies = {n: p for n, p in details.get("proxies", {}).items() if p.get("status") not in GONE}
    http = details["http_options"]
    # The edge runs on its proxy's node: loopback reaches a proxy bound to every interface.
    host = "127.0.0.1" if http["host"] in ("0.0.0.0", "::", "") else http["host"]
    head = details.get("controller_info", {}).get("node_id")
    places = {node: place for node, place in kept.items() if node in proxies}
    for node in sorted(proxies, key=lambda n: (n != head, n)):
        if node in places:
            continue
        ip = proxies[node]["node_ip"]
        taken = {p.port for p in places.values() if p.node_ip == ip}
        port = base_port
        while port in taken:
            port += 1
        places[node] = EdgePlace(ip, port, (host, http["port"]))
    return places


def upstreams(place: EdgePlace, details: dict[str, Any], targets: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The servers of one node's edge: the ingress replicas it can reach among ``targets`` (their ``ip:port``,
    from the controller's target groups), else its node's Serve proxy."""
    host = details["http_options"]["host"]
    on_loopback = host in LOOPBACK  # reached over loopback, so from its own host only
    reachable = [(host, port) for ip, port in targets if ip == place.node_ip] if on_loopback else list(targets)
    return sorted(reachable) or [place.upstream]


def other_prefixes(details: dict[str, Any], app: str) -> list[str]:
    """The route prefixes of the applications other than ``app`` that a path under ``app``'s own would reach
    first (Serve routes by the longest prefix): those longer than it. A path outside ``app``'s prefix goes to the
    proxy anyway (``edge.haproxy.render``); an application without HTTP (``route_prefix: null``) has none."""
    apps = details.get("applications", {})
    own = len((apps.get(app, {}).get("route_prefix") or "/").rstrip("/"))
    prefixes = {(found.get("route_prefix") or "").rstrip("/") for name, found in apps.items() if name != app}
    return sorted(p for p in prefixes if len(p) > own)
