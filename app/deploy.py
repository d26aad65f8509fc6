"""Deploy the application from a Serve config, as users do: for the tests, the benchmarks and the GPU check.

- Profiles: the Serve configs under ``configs/`` (and ``serve_config.yaml``), and their tiny variants: a GPU or
  cluster profile keeps what it says about placement (GPUs, custom resources, replicas per node, autoscaling)
  and takes the tiny models' service settings from ``configs/local.yaml`` and small CPU requests, so it deploys
  on a test machine (fake GPUs advertised to Ray) or runs quickly on a real GPU, with production's resource shape.
- Sessions: a config on a free HTTP port, its relative model and data paths under a chosen project root
  (``CONTENT_STUDIO_ROOT``), deployed with the real ``serve`` CLI against a dashboard, then a wait for health.
"""

from __future__ import annotations

import copy
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "configs" / "local.yaml"
HALF_PRECISION_SERVICES = ("text", "image")  # Coqui voices and ALS factors stay float32
EDGE_IMPORT_PATH = "app.builder:build_edge"  # the C edge's application (edge/haproxy.py)


def load(path: str | Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def app_of(config: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    apps = config["applications"]
    return apps[0] if name is None else next(a for a in apps if a["name"] == name)


def deployments_of(app: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in app["deployments"]}


def tiny_variant(
    config: dict[str, Any],
    *,
    name: str | None = None,
    route_prefix: str | None = None,
    num_cpus: float = 0.1,
    dtype: str | None = None,
) -> dict[str, Any]:
    """The first application of ``config`` with tiny models and small CPU/memory requests (GPUs kept), taking no
    jobs (a copy must not consume its original's queue)."""
    app = without_jobs(copy.deepcopy(app_of(config)))
    local_app = app_of(load(LOCAL))
    local = deployments_of(local_app)
    app["runtime_env"] = copy.deepcopy(local_app.get("runtime_env", {}))
    if name:
        app["name"] = name
    if route_prefix:
        app["route_prefix"] = route_prefix
    for deployment in app["deployments"]:
        tiny = copy.deepcopy(local[deployment["name"]]["user_config"])
        if dtype and deployment["name"] in HALF_PRECISION_SERVICES:
            tiny["dtype"] = dtype
        deployment["user_config"] = tiny
        options = deployment.setdefault("ray_actor_options", {})
        options["num_cpus"] = num_cpus
        options.pop("memory", None)
        scaling = deployment.get("autoscaling_config")
        if scaling:  # start at the minimum: a test machine has no room for production's initial fleet
            scaling["initial_replicas"] = scaling.get("min_replicas", 1)
    return keep_possible_experiments(app)


def keep_possible_experiments(app: dict[str, Any]) -> dict[str, Any]:
    """Keep only the ingress's experiments whose variant deployments ``app`` has (in place; returns ``app``)."""
    names = set(deployments_of(app))
    for deployment in app["deployments"]:
        experiments = deployment["user_config"].get("experiments") if deployment["name"] == "ingress" else None
        if experiments:
            deployment["user_config"]["experiments"] = {
                name: e
                for name, e in experiments.items()
                if all(v["deployment"] in names for v in e["variants"].values())
            }
    return app


def only(app: dict[str, Any], services: tuple[str, ...]) -> dict[str, Any]:
    """``app`` deploying only these services (model services, and ``pipeline`` if named) and its ingress, as the
    builder's ``args.services`` allows, and taking no jobs (in place; returns ``app``)."""
    kept = {*services, "ingress"}
    app["deployments"] = [d for d in app["deployments"] if d["name"] in kept]
    app.setdefault("args", {})["services"] = list(services)
    return keep_possible_experiments(without_jobs(app))


def without_jobs(app: dict[str, Any]) -> dict[str, Any]:
    """``app`` taking no content jobs: no ``args.jobs``, no consumer (in place; returns ``app``). A copy of an app
    must not consume its original's queue."""
    app.get("args", {}).pop("jobs", None)
    app["deployments"] = [d for d in app["deployments"] if d["name"] != "jobs"]
    return app


def gpus_requested(app: dict[str, Any], at: str = "initial_replicas") -> float:
    """GPUs an application asks for with every deployment at ``min_replicas``/``initial_replicas``/``max_replicas``."""
    total = 0.0
    for deployment in app["deployments"]:
        gpus = deployment.get("ray_actor_options", {}).get("num_gpus", 0)
        scaling = deployment.get("autoscaling_config")
        replicas = scaling.get(at, scaling.get("min_replicas", 1)) if scaling else deployment.get("num_replicas", 1)
        total += gpus * replicas
    return total


# --- sessions ------------------------------------------------------------------------------------------------
READY_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_config(source: Path | dict[str, Any], project_root: Path, port: int) -> dict[str, Any]:
    """A Serve config (file or dict) with Serve's proxy on ``port`` and the C edge (if the config has one) on
    another free port, its relative model and data paths under ``project_root``."""
    config = copy.deepcopy(source) if isinstance(source, dict) else yaml.safe_load(Path(source).read_text())
    config["http_options"]["port"] = port
    for app in config["applications"]:
        app.setdefault("runtime_env", {}).setdefault("env_vars", {})["CONTENT_STUDIO_ROOT"] = str(project_root)
        if app["import_path"] == EDGE_IMPORT_PATH:
            app["deployments"][0]["user_config"]["port"] = free_port()
    return config


def edge_url(config: dict[str, Any]) -> str | None:
    """Where clients reach the C edge of ``config``, or None when it has none."""
    for app in config["applications"]:
        if app["import_path"] == EDGE_IMPORT_PATH:
            return f"http://127.0.0.1:{app['deployments'][0]['user_config']['port']}"
    return None


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
