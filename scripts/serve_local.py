"""Run the app on a local Ray instance the way users do: ``serve deploy`` of a Serve config against a dashboard.

Shared by the integration tests and the benchmark: a free HTTP port, ``CONTENT_STUDIO_ROOT`` pointing at a
chosen folder (models and data), the real ``serve`` CLI, and a wait for ``/v1/health``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

READY_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_config(source: Path | dict[str, Any], project_root: Path, port: int) -> dict[str, Any]:
    """A Serve config (file or dict) on ``port``, its relative model and data paths under ``project_root``."""
    import copy

    config = copy.deepcopy(source) if isinstance(source, dict) else yaml.safe_load(Path(source).read_text())
    config["http_options"]["port"] = port
    for app in config["applications"]:
        app.setdefault("runtime_env", {}).setdefault("env_vars", {})["CONTENT_STUDIO_ROOT"] = str(project_root)
    return config


def serve_cli(*args: str, dashboard: str) -> subprocess.CompletedProcess:
    serve = Path(sys.executable).with_name("serve")
    done = subprocess.run([str(serve), *args, "--address", dashboard], capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise RuntimeError(f"serve {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def wait_healthy(url: str, timeout: float = READY_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/v1/health", timeout=10)
            last = response.text
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(1)
    raise TimeoutError(f"app not healthy after {timeout}s: {last}")
