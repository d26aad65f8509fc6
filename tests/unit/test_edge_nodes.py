"""Where the C edge runs (edge/nodes.py): an edge per node with a Serve proxy, distinct ports for nodes that share
an address, ports kept while nodes live; what each fronts (the ingress replicas it can reach under direct ingress,
else its proxy); each edge's share of a service's capacity (edge/admission.py)."""

from __future__ import annotations

from edge.admission import shares
from edge.nodes import EdgePlace, edge_places, other_prefixes, upstreams


def details(proxies: dict[str, str], host: str = "0.0.0.0", head: str = "h", drained: tuple[str, ...] = ()) -> dict:
    return {
        "http_options": {"host": host, "port": 8001},
        "controller_info": {"node_id": head},
        "proxies": {
            node: {"node_id": node, "node_ip": ip, "status": "DRAINED" if node in drained else "HEALTHY"}
            for node, ip in proxies.items()
        },
    }


def test_every_node_with_a_proxy_gets_an_edge_on_the_port_in_front_of_its_own_proxy() -> None:
    nodes = {"h": "10.0.0.1", "w1": "10.0.0.2", "w2": "10.0.0.3"}
    places = edge_places(details(nodes), 8000, {})
    assert places == {node: EdgePlace(ip, 8000, ("127.0.0.1", 8001)) for node, ip in nodes.items()}
    loopback = edge_places(details({"h": "127.0.0.1"}, host="127.0.0.1"), 8000, {})
    assert loopback["h"].upstream == ("127.0.0.1", 8001)


def test_nodes_sharing_an_address_get_distinct_ports_the_heads_first_and_keep_them() -> None:
    one_host = {"w2": "127.0.0.1", "h": "127.0.0.1", "w1": "127.0.0.1"}
    places = edge_places(details(one_host), 8000, {})
    assert {node: p.port for node, p in places.items()} == {"h": 8000, "w1": 8001, "w2": 8002}
    # w1 leaves: the others keep their ports; a node that joins takes the lowest free one.
    after = edge_places(details({"h": "127.0.0.1", "w2": "127.0.0.1", "w3": "127.0.0.1"}), 8000, places)
    assert {node: p.port for node, p in after.items()} == {"h": 8000, "w2": 8002, "w3": 8001}


def test_a_drained_proxy_has_no_edge() -> None:
    places = edge_places(details({"h": "10.0.0.1", "w1": "10.0.0.2"}, drained=("w1",)), 8000, {})
    assert set(places) == {"h"}


def test_each_holder_gets_its_share_of_a_capacity_at_least_one_place() -> None:
    assert shares({"text": 112, "image": 1, "voice": None}, 3) == {"text": 38, "image": 1, "voice": None}
    assert shares({"text": 112}, 0) == {"text": 112}


def test_under_direct_ingress_an_edge_fronts_the_ingress_replicas_it_can_reach_else_its_proxy() -> None:
    replicas = [("10.0.0.2", 30001), ("10.0.0.1", 30000)]
    everywhere = details({"h": "10.0.0.1", "w1": "10.0.0.2"})
    head = edge_places(everywhere, 8000, {})["h"]
    assert upstreams(head, everywhere, replicas) == sorted(replicas)  # bound on every interface: all of them
    assert upstreams(head, everywhere, []) == [("127.0.0.1", 8001)]  # no direct ingress: its node's proxy
    loopback = details({"h": "10.0.0.1", "w1": "10.0.0.2"}, host="127.0.0.1")
    places = edge_places(loopback, 8000, {})
    assert upstreams(places["h"], loopback, replicas) == [("127.0.0.1", 30000)]  # its own host's, over loopback
    assert upstreams(places["w1"], loopback, [("10.0.0.1", 30000)]) == [("127.0.0.1", 8001)]  # none it can reach


def test_the_other_applications_prefixes_an_edge_passes_on_are_those_a_path_under_its_own_would_reach_first() -> None:
    apps = {"content-studio": "/", "spot": "/spot/", "jobs": "/jobs", "edge": None, "root-twin": "/"}
    details = {"applications": {name: {"route_prefix": prefix} for name, prefix in apps.items()}}
    assert other_prefixes(details, "content-studio") == ["/jobs", "/spot"]
    assert other_prefixes(details, "spot") == []  # longer than every other: what reaches it is its own
    assert other_prefixes({"applications": {}}, "content-studio") == []  # not deployed yet
