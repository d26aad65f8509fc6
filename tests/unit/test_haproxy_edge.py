"""The C edge (edge/haproxy.py) with the real HAProxy binary that Ray ships, in front of stubs of its upstreams.

No Ray here: a stub answers as Serve's proxy or a direct-ingress replica does (its health path, a plain-text 500
when an ingress replica dies, the app's JSON), so each refusal the edge makes is checked on its own, and with
two stubs, how the edge shares a cap among its servers and passes over a dead one.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from app.deploy import free_port
from edge.haproxy import EdgeConfig, HAProxyEdge, haproxy_binary, render


class StubProxy(http.server.ThreadingHTTPServer):
    """Serve's proxy (or one ingress replica's own server) as the edge sees it. POST /v1/completions waits for
    ``release``: a request holding its place."""

    daemon_threads = True

    def __init__(self) -> None:
        self.release = threading.Event()
        self.arrived = threading.Semaphore(0)
        super().__init__(("127.0.0.1", free_port()), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: StubProxy
    protocol_version = "HTTP/1.1"  # kept-alive connections, as Serve's proxy and the replicas' servers keep them

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/-/healthz":
            self._answer(200, b"success", "text/plain")
        elif self.path == "/lost":  # what Serve's proxy answers when the ingress replica holding a request dies
            self._answer(500, b"Internal Server Error", "text/plain; charset=utf-8")
        elif self.path == "/abort":  # the upstream dies with the request: the connection closes, no answer
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif self.path == "/app-error":
            self._answer(500, b'{"error": {"message": "boom", "type": "server_error"}}', "application/json")
        else:
            self._answer(200, json.dumps({"port": self.server.server_address[1]}).encode(), "application/json")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.arrived.release()
        self.server.release.wait(30)
        self._answer(200, b'{"choices": []}', "application/json")


def _serving_stub() -> Iterator[StubProxy]:
    server = StubProxy()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.release.set()
    server.shutdown()


upstream = pytest.fixture(_serving_stub, name="upstream")
second = pytest.fixture(_serving_stub, name="second")  # a second upstream: two ingress replicas


@pytest.fixture
def edge(upstream: StubProxy) -> Iterator[HAProxyEdge]:
    config = EdgeConfig(port=free_port(), limits={"text": 1}, queue_timeout_ms=20, retry_after_s=2)
    edge = HAProxyEdge(config, upstream.server_address[:2])
    edge.start()
    edge.apply({"text": None, "image": 8})
    yield edge
    edge.stop()


def hold(client: httpx.Client, count: int) -> list[threading.Thread]:
    holders = [
        threading.Thread(target=client.post, args=("/v1/completions",), kwargs={"json": {}}) for _ in range(count)
    ]
    for holder in holders:
        holder.start()
    return holders


def url(edge: HAProxyEdge) -> str:
    return f"http://127.0.0.1:{edge.config.port}"


def assert_json_503(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["retry-after"] == "2"
    error = response.json()["error"]
    assert error["type"] == "service_unavailable" and set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"]


def test_the_rendered_configuration_is_valid_haproxy(tmp_path) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text(render(EdgeConfig(app="content-studio"), "/studio", tmp_path, ("127.0.0.1", 8001)))
    checked = subprocess.run([haproxy_binary(), "-c", "-f", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "path /studio/v1/completions /studio/v1/chat/completions" in path.read_text()  # the app's prefix


def test_a_request_over_a_services_cap_is_refused_by_the_edge_in_json(edge: HAProxyEdge, upstream: StubProxy) -> None:
    with httpx.Client(base_url=url(edge), timeout=30) as client:
        (holder,) = hold(client, 1)
        assert upstream.arrived.acquire(timeout=10)  # the one place for text is taken
        assert_json_503(client.post("/v1/completions", json={}), "text", "at capacity")
        assert client.get("/v1/health").status_code == 200  # other routes are not capped by text
        upstream.release.set()
        holder.join(10)
        assert client.post("/v1/completions", json={}).status_code == 200  # the place is free again
        stats = edge.stats()
    assert stats["svc_text"]["limit"] == 1 and stats["svc_image"]["limit"] == 8 and stats["serve"]["limit"] == 0


def test_a_plain_text_500_from_the_proxy_becomes_a_json_503_and_the_apps_json_passes(edge: HAProxyEdge) -> None:
    with httpx.Client(base_url=url(edge), timeout=30) as client:
        assert_json_503(client.get("/lost"), "lost with an ingress replica")
        app_error = client.get("/app-error")
    assert app_error.status_code == 500 and app_error.json()["error"]["message"] == "boom"


def test_a_request_lost_with_its_upstream_gets_a_json_503_even_on_a_kept_alive_connection(edge: HAProxyEdge) -> None:
    """An ingress replica (or proxy) that dies with a request closes the connection unanswered: the edge answers
    503 with Retry-After in JSON every time, never a silent close of the client's kept-alive connection."""
    with httpx.Client(base_url=url(edge), timeout=30) as client:
        assert client.get("/v1/health").status_code == 200  # the client's connection is now kept alive
        for _ in range(3):
            assert_json_503(client.get("/abort"), "lost with an ingress replica")
        assert client.get("/v1/health").status_code == 200


def test_with_serves_proxy_down_every_request_gets_a_json_503(upstream: StubProxy) -> None:
    edge = HAProxyEdge(EdgeConfig(port=free_port(), retry_after_s=2), ("127.0.0.1", free_port()))  # no one there
    edge.start()
    try:
        with httpx.Client(base_url=url(edge), timeout=30) as client:
            assert_json_503(client.post("/v1/completions", json={}), "text")
            assert_json_503(client.get("/v1/health"))
    finally:
        edge.stop()


def test_the_edge_listens_on_its_loopback_address_only_and_stops_with_its_owner(edge: HAProxyEdge) -> None:
    process = psutil.Process(edge.process.pid)
    listening = {(c.laddr.ip, c.laddr.port) for c in process.net_connections("inet") if c.status == "LISTEN"}
    assert listening == {("127.0.0.1", edge.config.port)}  # no stats page, no metrics port, no replica ports
    assert oct(os.stat(edge.folder / "admin.sock").st_mode & 0o777) == "0o600"  # the admin socket: its owner's
    edge.stop()
    assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    assert not edge.listening()


def test_haproxy_dies_with_the_process_that_started_it(upstream: StubProxy) -> None:
    """A replica killed outright (no destructor runs) must not leave HAProxy holding the port."""
    port = free_port()
    script = "\n".join(
        [
            "import time",
            "from edge.haproxy import EdgeConfig, HAProxyEdge",
            f"edge = HAProxyEdge(EdgeConfig(port={port}), {tuple(upstream.server_address[:2])!r})",
            "edge.start()",
            "print(edge.process.pid, edge.folder, flush=True)",
            "time.sleep(60)",
        ]
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid_text, folder_text = owner.stdout.readline().split()
    pid, folder = int(pid_text), Path(folder_text)
    assert psutil.pid_exists(pid)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "HAProxy outlived the process that started it"
        time.sleep(0.05)
    with httpx.Client(timeout=2) as client, pytest.raises(httpx.ConnectError):
        client.get(f"http://127.0.0.1:{port}/")
    # Its folder outlived it (no stop ran); the next edge made on this machine removes it, and keeps live ones.
    assert folder.is_dir()
    live = HAProxyEdge(EdgeConfig(port=free_port()), tuple(upstream.server_address[:2]))
    later = HAProxyEdge(EdgeConfig(port=free_port()), tuple(upstream.server_address[:2]))
    try:
        assert not folder.exists()
        assert live.folder.is_dir() and later.folder.is_dir()
    finally:
        live.stop()
        later.stop()


def arrived(*servers: StubProxy, timeout: float = 10) -> list[int]:
    """How many held requests each server has, once their sum stops growing (each took its place)."""
    counts: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = [s.arrived._value for s in servers]  # a Semaphore's count: requests that arrived and wait
        if now == counts:
            return counts
        counts = now
        time.sleep(0.3)
    return counts


def test_a_cap_is_shared_exactly_among_the_replicas_the_edge_fronts(
    edge: HAProxyEdge, upstream: StubProxy, second: StubProxy
) -> None:
    """Direct ingress: the edge's servers are the ingress replicas; text's cap of 3 is 2 + 1 places, not 3 each."""
    edge.config.limits["text"] = 3
    edge.apply({"text": None})
    assert edge.route([upstream.server_address[:2], second.server_address[:2]]) == [
        upstream.server_address[:2],
        second.server_address[:2],
    ]
    with httpx.Client(base_url=url(edge), timeout=30) as client:
        holders = hold(client, 3)
        assert sorted(arrived(upstream, second)) == [1, 2]
        assert_json_503(client.post("/v1/completions", json={}), "text", "at capacity")  # the fourth
        upstream.release.set()
        second.release.set()
        for holder in holders:
            holder.join(10)
        servers = edge.stats()["svc_text"]["servers"]
    assert set(servers) == {"{}:{}".format(*s.server_address[:2]) for s in (upstream, second)}


def test_a_cap_below_the_number_of_replicas_still_holds(
    edge: HAProxyEdge, upstream: StubProxy, second: StubProxy
) -> None:
    """text's cap is 1 (the fixture's limit) over two replicas: one place in all, the other replica takes none."""
    edge.route([upstream.server_address[:2], second.server_address[:2]])
    with httpx.Client(base_url=url(edge), timeout=30) as client:
        holders = hold(client, 1)
        assert sum(arrived(upstream, second)) == 1
        assert_json_503(client.post("/v1/completions", json={}), "text", "at capacity")
        upstream.release.set()
        second.release.set()
        for holder in holders:
            holder.join(10)


def test_a_replica_that_refuses_connections_is_passed_over_and_a_new_one_is_taken(
    edge: HAProxyEdge, upstream: StubProxy, second: StubProxy
) -> None:
    """A replica gone (its port closed) before its health check fails: the requests sent to it never arrived, so
    the edge retries them on the other; and a re-routed edge sends to its new servers only."""
    upstream.release.set()
    second.release.set()
    edge.apply({"text": 64})
    edge.route([("127.0.0.1", free_port()), upstream.server_address[:2]])  # nobody listens on the first
    with httpx.Client(base_url=url(edge), timeout=30) as client:
        codes = [client.post("/v1/completions", json={}).status_code for _ in range(12)]
        assert codes == [200] * 12
        edge.route([second.server_address[:2]])
        before = upstream.arrived._value
        codes = [client.post("/v1/completions", json={}).status_code for _ in range(6)]
    assert codes == [200] * 6
    assert upstream.arrived._value == before and second.arrived._value == 6


def test_other_applications_prefixes_pass_to_serves_proxy_and_the_rest_to_the_replicas(
    upstream: StubProxy, second: StubProxy
) -> None:
    """Direct ingress: the edge fronts one application's ingress replica (``upstream``); another application's
    route prefix, exactly or a path under it, goes to the node's Serve proxy (``second``), uncapped by this app's
    services; a path that only starts with the same letters stays with the replica."""
    upstream.release.set()
    second.release.set()
    edge = HAProxyEdge(EdgeConfig(port=free_port(), limits={"text": 1}), second.server_address[:2])
    edge.start()
    try:
        edge.route([upstream.server_address[:2]])
        edge.others(["/spot/", "/jobs"])
        replica, proxy = (s.server_address[1] for s in (upstream, second))
        with httpx.Client(base_url=url(edge), timeout=30) as client:
            wanted = {"/spot": proxy, "/spot/v1/health": proxy, "/jobs/x": proxy, "/spotty": replica, "/v1/x": replica}
            assert {path: client.get(path).json()["port"] for path in wanted} == wanted
            assert [client.post("/spot/v1/completions", json={}).status_code for _ in range(3)] == [200] * 3
            assert second.arrived._value == 3 and upstream.arrived._value == 0
            edge.others([])  # that application is gone: its prefix is this one's again
            assert client.get("/spot/v1/health").json()["port"] == replica
    finally:
        edge.stop()


def test_with_a_prefix_of_its_own_an_edge_passes_every_path_outside_it_to_serves_proxy(
    upstream: StubProxy, second: StubProxy
) -> None:
    edge = HAProxyEdge(EdgeConfig(port=free_port()), second.server_address[:2], route_prefix="/studio")
    edge.start()
    try:
        edge.route([upstream.server_address[:2]])
        replica, proxy = (s.server_address[1] for s in (upstream, second))
        with httpx.Client(base_url=url(edge), timeout=30) as client:
            wanted = {"/studio": replica, "/studio/v1/health": replica, "/studios": proxy, "/other/v1": proxy}
            assert {path: client.get(path).json()["port"] for path in wanted} == wanted
    finally:
        edge.stop()


def test_an_unknown_config_field_is_refused() -> None:
    with pytest.raises(ValueError, match="extra"):
        EdgeConfig.model_validate({"port": 8000, "stats_port": 8404})
    assert EdgeConfig().host == "127.0.0.1"  # the default opens nothing beyond this machine
