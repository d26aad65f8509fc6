"""The C edge (HAProxy, edge/haproxy.py) in front of the session's app, as the local profile deploys it.

Asserted: requests pass through it; its caps follow the services' capacity as Serve reports it; a request over a
cap gets OpenAI's JSON error with 503 and ``Retry-After`` from the edge itself; it listens on loopback only; and
deleting its application stops the HAProxy process. Timings belong to ``make bench`` (bench/burst.py).
"""

from __future__ import annotations

import concurrent.futures
import copy
import socket
import time
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
from tests.integration.conftest import serve_cli


def describe(app: str) -> dict[str, Any]:
    return serve.get_deployment_handle("edge", app).describe.remote().result(timeout_s=30)


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
