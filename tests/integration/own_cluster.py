"""What the tests that run a Ray instance of their own (in a subprocess: ``every_node_edge.py``,
``direct_ingress_edge.py``) share: waiting for a count of things, reading an edge's report and a process's
ports, and clients that resend what the edge refused, as the openai client does."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import psutil


class ResendingClients:
    """``count`` clients sending ``GET /`` to ``url`` in a loop while the block runs; each resends a refusal after
    its ``Retry-After``, or a lost connection after 0.5 s, up to 20 times. ``report()``: every status, the shape
    of every refusal, every lost connection, and every request that never got its 200."""

    def __init__(self, url: str, count: int = 4) -> None:
        self.url = url
        self.statuses: list[int] = []
        self.refusals: list[list[Any]] = []  # status, content type, Retry-After of every answer that was not a 200
        self.lost: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client) for _ in range(count)]

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self._stop.is_set():
                for _ in range(20):
                    try:
                        response = http.get("/")
                    except httpx.TransportError as exc:
                        self.lost.append(type(exc).__name__)
                        time.sleep(0.5)
                        continue
                    self.statuses.append(response.status_code)
                    if response.status_code == 200:
                        break
                    headers = response.headers
                    self.refusals.append(
                        [response.status_code, headers.get("content-type"), headers.get("retry-after")]
                    )
                    time.sleep(float(headers.get("retry-after", 1)))
                else:
                    self.failures.append("no 200 after 20 sends")

    def __enter__(self) -> ResendingClients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def report(self) -> dict[str, Any]:
        return {"statuses": self.statuses, "refusals": self.refusals, "lost": self.lost, "failures": self.failures}


def running(described: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {node: e for node, e in described["edges"].items() if e.get("running")}


def wait_for(read: Any, count: int, what: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while len(found := read()) != count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {found}")
        time.sleep(0.5)
    return found


def listening(pid: int) -> list[list[Any]]:
    connections = psutil.Process(pid).net_connections("inet")
    return sorted([c.laddr.ip, c.laddr.port] for c in connections if c.status == "LISTEN")


def alive(pid: int) -> bool:
    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
