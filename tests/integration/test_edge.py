"""The C edge (HAProxy, edge/haproxy.py) in front of the session's app, as the local profile deploys it.

Asserted: requests pass through it; its caps follow the services' capacity as Serve reports it; a request over a
cap gets OpenAI's JSON error with 503 and ``Retry-After`` from the edge itself; it listens on loopback only;
deleting its application stops the HAProxy process; and on a cluster with a proxy on every node (a Ray cluster of
its own, ``every_node_edge.py``), every node gets an edge on a port of its own, and a node stopped under load
only delays requests (``slow``: ``pytest -m slow tests/integration/test_edge.py``); on a Ray instance with Serve's
direct ingress (of its own, ``direct_ingress_edge.py``), the edge fronts the ingress replicas' own ports and passes
over one that is lost. Timings belong to ``make bench`` (bench/burst.py, bench/llm.py).
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import ray
import yaml
from ray import serve

from app.deploy import EDGE_IMPORT_PATH, edge_url, free_port
from edge.admission import capacities
from edge.haproxy import CAPPED_ROUTES
from tests.integration.conftest import DIRECT_INGRESS, serve_cli
from tests.integration.serve_state import replica_ids, running_replicas, wait_deployments_healthy

ROOT = Path(__file__).resolve().parents[2]


def describe(app: str) -> dict[str, Any]:
    """The edge of the session's one HTTP node (the local profile serves HTTP on the head only)."""
    edges = serve.get_deployment_handle("edge", app).describe.remote().result(timeout_s=30)["edges"]
    assert len(edges) == 1, edges
    return next(iter(edges.values()))


def wait_edge(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/v1/health", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"the edge at {url} did not answer"
        time.sleep(0.5)


def controller_capacities() -> dict[str, int | None]:
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    details = ray.get(controller.get_serve_instance_details.remote())
    return capacities(details, "content-studio", tuple(CAPPED_ROUTES))


@pytest.fixture(scope="module")
def edge(deployed_app: dict) -> str:
    url = edge_url(deployed_app["config"])
    assert url is not None, "the local profile deploys the C edge"
    wait_edge(url)
    return url


def test_the_app_answers_through_the_edge_which_caps_each_service_at_its_capacity(edge: str) -> None:
    with httpx.Client(base_url=edge, timeout=60) as client:
        completion = client.post("/v1/completions", json={"prompt": "Harbour", "max_tokens": 2, "seed": 1})
        assert completion.status_code == 200 and completion.json()["object"] == "text_completion"
        assert client.get("/v1/models").json()["object"] == "list"  # uncapped routes pass too
        bad = client.post("/v1/completions", json={"prompt": "Harbour", "max_tokens": -1})
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "max_tokens"  # the app's own answers
    deadline = time.monotonic() + 60
    while True:  # the caps follow what Serve reports (the services may be scaling meanwhile)
        expected = {name: cap or 0 for name, cap in controller_capacities().items()}
        limits = describe("edge")["limits"]
        if limits == expected:
            break
        assert time.monotonic() < deadline, (limits, expected)
        time.sleep(0.5)
    assert limits["text"] >= 1 and limits["pipeline"] >= 1


def test_the_edge_listens_on_loopback_only(deployed_app: dict, edge: str) -> None:
    pid = describe("edge")["pid"]
    listening = {
        (c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("inet") if c.status == "LISTEN"
    }
    assert listening == {("127.0.0.1", int(edge.rsplit(":", 1)[1]))}


def test_a_burst_over_a_cap_is_refused_by_the_edge_in_json_and_its_app_stops_haproxy(deployed_app: dict) -> None:
    """A second edge over the same app, text capped at one request in flight: while a stream holds that place,
    every other completion is refused by HAProxy (503, Retry-After, OpenAI's error); once it ends, they pass.
    Deleting the edge's application stops its HAProxy and frees its port."""
    config = copy.deepcopy(deployed_app["config"])
    port = free_port()
    edge_app = {
        "name": "edge-capped",
        "route_prefix": None,
        "import_path": EDGE_IMPORT_PATH,
        "deployments": [{"name": "edge", "user_config": {"port": port, "limits": {"text": 1}, "retry_after_s": 3}}],
    }
    config["applications"].append(edge_app)
    path = deployed_app["config_path"].with_name("edge-capped.yaml")
    path.write_text(yaml.safe_dump(config))
    serve_cli("deploy", str(path), dashboard=deployed_app["dashboard"])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_edge(url)
        deadline = time.monotonic() + 30
        while describe("edge-capped")["limits"].get("text") != 1:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # A request whose body has not all arrived holds its place at the edge for as long as the test wants.
        held = socket.create_connection(("127.0.0.1", port))
        held.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        deadline = time.monotonic() + 30
        while describe("edge-capped")["stats"]["svc_text"]["inflight"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)

        def one(n: int) -> httpx.Response:
            return httpx.post(f"{url}/v1/completions", json={"prompt": f"Burst {n}", "max_tokens": 2}, timeout=60)

        with held, concurrent.futures.ThreadPoolExecutor(16) as pool:
            refused = list(pool.map(one, range(16)))
        for response in refused:
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/json" and response.headers["retry-after"] == "3"
            error = response.json()["error"]
            assert error["type"] == "service_unavailable" and error["message"].startswith("text is at capacity")
        deadline = time.monotonic() + 30  # the held request is gone: its place is free again
        while (passed := one(99)).status_code != 200:
            assert time.monotonic() < deadline, passed.text
            time.sleep(0.2)
        pid = describe("edge-capped")["pid"]
    finally:
        serve.delete("edge-capped")
    deadline = time.monotonic() + 30
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "HAProxy outlived its application"
        time.sleep(0.2)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v1/health", timeout=5)


def own_cluster_report(module: str, folder: Path, timeout: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python -m module REPORT.json`` on a Ray instance of its own (not the session's; ``env`` holds its
    per-instance switches) and read the report it wrote."""
    out = folder / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", module, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "RAY_ADDRESS": "", **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.late
@pytest.mark.slow  # a Ray cluster of its own beside the session's: 82 s alone here, past 420 s once in a full run
def test_every_node_serving_http_has_an_edge_and_a_lost_node_only_delays_requests(tmp_path) -> None:
    """On a Ray cluster of its own (head and two workers on this host, Serve's proxies on every node): an edge per
    node, each on its own port (they share an address), loopback only, each answering through Serve; a worker
    stopped outright under load through the head's edge: its edge goes, every request still ends in a 200 (resent
    after a JSON 503 with Retry-After, or after a lost connection), and stopping Serve stops every HAProxy."""
    # The edge onto each node's proxy: that cluster runs without direct ingress (the session's runs with it).
    no_direct = {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
    report = own_cluster_report("tests.integration.every_node_edge", tmp_path, timeout=420, env=no_direct)
    nodes = {report["nodes"]["head"], *report["nodes"]["workers"]}
    edges = report["edges"]
    assert set(edges) == nodes
    ports = {int(e["address"].rsplit(":", 1)[1]) for e in edges.values()}
    assert len(ports) == 3  # one host: distinct ports, the head's first
    assert int(edges[report["nodes"]["head"]]["address"].rsplit(":", 1)[1]) == min(ports)
    for edge in edges.values():
        assert edge["listening"] == [["127.0.0.1", int(edge["address"].rsplit(":", 1)[1])]]
    assert all(answer["node"] in nodes for answer in report["answers"].values())  # through Serve to a replica
    after = report["after_loss"]
    assert after["edges"] == sorted(nodes - {report["removed"]})
    assert after["failures"] == [] and after["statuses"].count(200) > 0
    for status, content_type, retry_after in after["refusals"]:  # only delayed, and told when to come back
        assert status in (502, 503, 504) and content_type == "application/json" and retry_after, after["refusals"]
    assert set(report["survivor_answers"].values()) == {200}
    assert report["left_running_after_shutdown"] == []


@pytest.mark.late
def test_under_direct_ingress_the_edge_fronts_the_ingress_replicas_and_passes_over_a_lost_one(tmp_path) -> None:
    """On a Ray instance of its own with Serve's direct ingress (switched per Ray instance): the edge fronts both
    ingress replicas' own ports (no Python proxy), which listen on loopback only; concurrent requests are shared
    between them; one killed outright under load is replaced and fronted anew, and every request still ends in a
    200 (resent after a JSON refusal with Retry-After, or after a lost connection); stopping Serve stops HAProxy."""
    report = own_cluster_report("tests.integration.direct_ingress_edge", tmp_path, timeout=300, env=DIRECT_INGRESS)
    ports = [int(a.rsplit(":", 1)[1]) for a in report["upstreams"]]
    assert len(ports) == 2 and all(30000 <= p <= 31000 for p in ports)  # the replicas' own servers, not the proxy
    assert report["replica_listening"] == sorted(["127.0.0.1", p] for p in ports)  # loopback only
    assert {status for status, _ in report["concurrent"]} == {200}
    assert len({replica for _, replica in report["concurrent"]}) == 2  # 8 at once: both replicas took some
    assert len(report["upstreams_after"]) == 2  # the replacement, fronted (the controller's list, with its port)
    after_replicas = {replica for _, replica in report["concurrent_after"]}
    assert {s for s, _ in report["concurrent_after"]} == {200}
    assert len(after_replicas) == 2 and report["killed"] not in after_replicas  # the survivor and the replacement
    after = report["after_loss"]
    assert after["failures"] == [] and after["statuses"].count(200) > 0
    assert after["lost"] == []  # never a connection closed without an answer
    for status, content_type, retry_after in after["refusals"]:  # only delayed, and told when to come back
        assert status == 503 and content_type == "application/json" and retry_after, after["refusals"]
    assert report["left_running_after_shutdown"] == []


def busiest_ingress_replica(head: str) -> Any:
    """The ingress replica on the head node, where Serve's proxy runs (it prefers replicas on its own node, so
    this one holds the requests in flight), else any."""
    from ray.util.state import list_actors

    names = sorted(f"SERVE_REPLICA::content-studio#ingress#{r}" for r in replica_ids("content-studio")["ingress"])
    on_head = [
        a.name
        for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        if a.name in names and a.node_id == head
    ]
    return ray.get_actor((on_head or names)[0], namespace="serve")


def load_while_an_ingress_replica_dies(
    edge: str, head: str, max_retries: int, seconds: float = 8.0
) -> tuple[int, list]:
    """Completions from six threads of the official openai client through the edge for ``seconds``; two seconds in,
    one of the two ingress replicas is killed (Ray does not restart it; Serve replaces it). Returns the number of
    completions and every exception the client raised."""
    import openai

    oai = openai.OpenAI(base_url=f"{edge}/v1", api_key="unused", max_retries=max_retries, timeout=120)
    deadline = time.monotonic() + seconds
    errors: list[Exception] = []

    def worker(n: int) -> int:
        done = 0
        while time.monotonic() < deadline:
            try:
                oai.completions.create(model="tiny-gpt2", prompt=f"Harbour {n} {done}", max_tokens=8, seed=n)
                done += 1
            except openai.OpenAIError as exc:
                errors.append(exc)
        return done

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(worker, n) for n in range(6)]
        time.sleep(2)
        ray.kill(busiest_ingress_replica(head), no_restart=True)
        completed = sum(f.result() for f in futures)
    wait_deployments_healthy("content-studio", ("ingress",))
    deadline = time.monotonic() + 120  # the replacement replica running beside the survivor
    while running_replicas("content-studio")["ingress"] < 2:
        assert time.monotonic() < deadline
        time.sleep(1)
    wait_edge_fronts(2)
    return completed, errors


def wait_edge_fronts(replicas: int, timeout: float = 60) -> None:
    """Until the edge fronts ``replicas`` ingress replicas, each passing its health checks: a replacement is
    taken within a round (``refresh_s``) and a check (the edge's view trails Serve's by up to a few seconds, and
    a second loss before the replacement is up leaves the edge nothing to send to)."""
    deadline = time.monotonic() + timeout
    while True:
        servers = describe("edge")["stats"].get("svc_text", {}).get("servers", {})
        if len(servers) == replicas and set(servers.values()) == {"UP"}:
            return
        assert time.monotonic() < deadline, servers
        time.sleep(0.5)


def test_an_ingress_replica_lost_under_load_fails_only_with_json_503s_that_one_resend_survives(
    edge: str, deployed_app: dict
) -> None:
    """The local profile runs two ingress replicas. With the openai client's ``max_retries=0``, a request in flight
    on the replica that dies fails, as a JSON 503 with Retry-After from the edge, never a plain 500 or a dropped
    connection; with one retry (the client honours Retry-After), no request fails."""
    import openai

    assert running_replicas("content-studio")["ingress"] == 2
    wait_edge_fronts(2)
    completed, errors = load_while_an_ingress_replica_dies(edge, deployed_app["head_node_id"], max_retries=0)
    assert completed > 0
    for error in errors:
        assert isinstance(error, openai.APIStatusError), repr(error)  # never a connection error
        assert error.status_code == 503 and error.response.headers["retry-after"], error
        assert error.response.headers["content-type"] == "application/json"
        assert error.body["type"] == "service_unavailable", error.body  # OpenAI's error shape
    completed, errors = load_while_an_ingress_replica_dies(edge, deployed_app["head_node_id"], max_retries=1)
    assert completed > 0 and errors == [], [repr(e) for e in errors]
